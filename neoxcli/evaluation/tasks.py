"""Which lm-eval tasks to run, checked before the model loads, and running them one at a time.

lm-eval's built-in index (~15k names) takes seconds to build, so it is built only
when a name is not found among the YAML files given with ``--tasks`` or
``--include-path``, or when the list is asked for. Datasets are loaded while the
tasks are built, before any model work: a dataset that is not on disk fails here
with its name, in seconds (the hub is switched to offline mode when unreachable).
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neoxcli.errors import DataError, NeoxError

EVAL_HINT = "install the evaluation extra: pip install 'neoxcli[eval]'"


def require_lm_eval() -> str:
    """lm-eval's version; a clean error when it is not installed."""
    # Progress bars of datasets and lm-eval's tqdm loops: both read these when first imported.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from importlib.metadata import version

        import lm_eval  # noqa: F401
    except ImportError:
        raise NeoxError("lm-eval (lm-evaluation-harness) is not installed", hint=EVAL_HINT) from None
    return version("lm_eval")


def hub_reachable(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    """Whether the Hugging Face Hub answers a TCP connect within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline_if_unreachable() -> bool:
    """Set the hub's offline switches when it cannot be reached, so a missing dataset fails at once.

    Must run before ``datasets`` is imported (it reads them at import). Returns
    whether the hub is offline.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        return True
    if hub_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    return True


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every task's settings at INFO and WARNING; keep the terminal for our own output."""
    import logging

    logger = logging.getLogger("lm_eval")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _is_file_spec(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or os.sep in spec or Path(spec).is_file()


def _check_yaml(path: Path) -> None:
    """Parse a task file the way lm-eval's loader will, naming the file and line of a mistake."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !function and friends
    if not path.is_file():
        raise DataError(f"task file {path} does not exist")
    try:
        body = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise DataError(f"task file {path} does not parse{where}: {problem}") from None
    except UnicodeDecodeError:
        raise DataError(f"task file {path} is not UTF-8 text") from None
    if not isinstance(body, dict) or not ({"task", "group"} & set(body)):
        raise DataError(f"task file {path} is not an lm-eval task: it needs a 'task' (or 'group') key")


@dataclass
class TaskPlan:
    """The task manager to use and the specs to run, in order (names or YAML paths)."""

    manager: Any
    specs: list[str]
    built_in_index: bool


def plan_tasks(tasks: list[str], include_path: list[Path] | None = None) -> TaskPlan:
    """Check every ``--tasks`` entry and choose the smallest task index that knows them all."""
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise NeoxError(
            "--tasks is empty", hint="name lm-eval tasks (e.g. lambada_openai) or task YAML files"
        )
    includes = [str(Path(p).resolve()) for p in include_path or []]
    for p in include_path or []:
        if not Path(p).is_dir():
            raise DataError(f"--include-path {p}: no such directory")
    specs: list[str] = []
    names: list[str] = []
    for spec in tasks:
        if _is_file_spec(spec):
            path = Path(spec).resolve()
            _check_yaml(path)
            specs.append(str(path))
        else:
            specs.append(spec)
            names.append(spec)
    with quiet_lm_eval():
        manager = TaskManager(include_path=includes or None, include_defaults=False)
        known = set(manager.all_tasks)
        built_in = False
        if any(n not in known and not manager.match_tasks([n]) for n in names):
            manager = TaskManager(include_path=includes or None)
            built_in = True
    known = set(manager.all_tasks)
    for name in names:
        if name not in known and not manager.match_tasks([name]):
            close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "see `neox eval --list-tasks PATTERN`"
            raise NeoxError(f"unknown task {name!r}", hint=hint)
    expanded: list[str] = []
    for spec in specs:
        if spec in names and spec not in known:  # a glob: run every match
            expanded.extend(manager.match_tasks([spec]))
        else:
            expanded.append(spec)
    return TaskPlan(manager, expanded, built_in)


def list_tasks(pattern: str | None = None, include_path: list[Path] | None = None) -> list[tuple[str, str]]:
    """(name, kind) of every task, group and tag whose name contains ``pattern`` (or matches it as a glob)."""
    import fnmatch

    from lm_eval.tasks import TaskManager

    with quiet_lm_eval():
        manager = TaskManager(include_path=[str(p) for p in include_path or []] or None)
    rows = []
    for name, entry in manager.task_index.items():
        if pattern and pattern not in name and not fnmatch.fnmatch(name, pattern):
            continue
        kind = getattr(getattr(entry, "kind", None), "name", "task").lower()
        rows.append((name, kind))
    return sorted(rows)


def _dataset_of(manager: Any, spec: str) -> str | None:
    """The ``dataset_path`` (and name) a task reads, for error messages."""
    entry = manager.task_index.get(spec)
    cfg = getattr(entry, "cfg", None)
    if cfg is None and spec.endswith((".yaml", ".yml")):
        try:
            from lm_eval.tasks._yaml_loader import load_yaml

            cfg = load_yaml(spec, resolve_func=False)
        except Exception:  # only for a better message; the real error is reported anyway
            cfg = None
    if not isinstance(cfg, dict) or not cfg.get("dataset_path"):
        return None
    ds, name = cfg["dataset_path"], cfg.get("dataset_name")
    return f"{ds}/{name}" if name and name != "default" else ds


def build_tasks(plan: TaskPlan) -> list[tuple[str, list[Any]]]:
    """Build every task (loading its dataset) before the model loads: (spec, task objects) in order."""
    built = []
    for spec in plan.specs:
        try:
            with quiet_lm_eval():
                loaded = plan.manager.load([spec])
        except NeoxError:
            raise
        except Exception as exc:  # lm-eval and datasets raise many types for an unavailable dataset
            text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            dataset = _dataset_of(plan.manager, spec)
            offline = any(
                k in text
                for k in ("Connection", "offline", "OFFLINE", "resolve", "Couldn't reach", "not found")
            ) or isinstance(exc, (ConnectionError, OSError))
            if dataset and offline:
                raise DataError(
                    f"task {spec!r} needs the dataset {dataset!r}, which is not available offline ({text})",
                    hint="download it while online (it is cached), or point a local task YAML at the data files",
                ) from None
            raise DataError(f"task {spec!r} cannot be loaded: {text}") from None
        groups = loaded["groups"]
        top = [groups[spec]] if spec in groups else list(loaded["tasks"].values())
        built.append((spec, top))
    return built


def run_task(
    lm: Any,
    task_objects: list[Any],
    manager: Any,
    *,
    num_fewshot: int | None,
    limit: float | None,
    bootstrap_iters: int,
    log_samples: bool,
    seed: int,
) -> dict[str, Any]:
    """One ``lm_eval.simple_evaluate`` call over already built tasks; lm-eval's result dict."""
    import lm_eval

    with quiet_lm_eval(), _env_info_once():
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=task_objects,
            num_fewshot=num_fewshot,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=log_samples,
            task_manager=manager,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if out is None:
        raise RuntimeError("lm-eval returned no results")
    return out


_ENV_INFO: dict[str, Any] = {}


@contextmanager
def _env_info_once() -> Iterator[None]:
    """lm-eval collects the environment (pip list, nvidia-smi: seconds of subprocesses) per call; once is enough."""
    import lm_eval.evaluator as evaluator

    original: Callable[[dict[str, Any]], None] = evaluator.add_env_info

    def cached(storage: dict[str, Any]) -> None:
        if not _ENV_INFO:
            probe: dict[str, Any] = {}
            original(probe)
            _ENV_INFO.update(probe)
        storage.update(_ENV_INFO)

    # lm-eval records the git commit of the working directory, and `git` complains outside a repository.
    git_hash = evaluator.get_git_commit_hash
    evaluator.add_env_info = cached
    evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        evaluator.add_env_info = original
        evaluator.get_git_commit_hash = git_hash
