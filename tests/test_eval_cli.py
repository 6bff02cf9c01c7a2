"""`neox eval` end to end on local tasks and text, and its promise for bad input.

The command runs in-process (``neoxcli.cli.main``) to keep the suite fast; bad
input is judged by the reliability harness's ``expect_clean_error``: exit 2,
one ``error:`` line naming the culprit, no traceback, no file left behind.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lm_eval")

from eval_tasks import DOCS_TEXT, write_checkpoint, write_tasks  # noqa: E402
from reliability.harness import Outcome, expect_clean_error, files_under  # noqa: E402

from neoxcli.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalcli")
    run = write_checkpoint(root / "run")
    text = root / "valid.txt"
    text.write_text(DOCS_TEXT)
    yield {"root": root, "run": run, "tasks": write_tasks(root / "tasks", docs=6), "text": text}
    torch.set_num_threads(threads)


def neox(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def test_tasks_and_text_in_one_run(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out_path = env["root"] / "out" / "r.json"
    tasks = ",".join(str(env["tasks"][t]) for t in ("tiny_mc", "tiny_rolling"))
    r = neox(
        capsys,
        "-c", str(env["run"]), "--tasks", tasks, "--limit", "4", "--batch-size", "2", "--log-samples",
        "--bootstrap-iters", "0", "--text", str(env["text"]), "--context-lengths", "32,64", "--stride", "16",
        "--output-path", str(out_path), "--format", "json",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "--limit 4" in r.err  # warned
    doc = json.loads(out_path.read_text())
    assert doc == json.loads(r.out)
    assert doc["status"] == "complete"
    assert set(doc["metrics"]) == {"tiny_mc", "tiny_rolling"}
    assert set(doc["metrics"]["tiny_mc"]["acc"]) == {"value", "stderr"}
    assert doc["results"]["tiny_mc"]["acc,none"] == doc["metrics"]["tiny_mc"]["acc"]["value"]
    cfg = doc["config"]
    assert (
        cfg["limit"] == 4 and cfg["batch_size"] == 2 and cfg["seed"] == 1234 and cfg["tag"] == "global_step1"
    )
    assert cfg["lm_eval_version"].startswith("0.4") and cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    assert cfg["model"]["hidden_size"] == 64 and set(cfg["tasks"]) == {"tiny_mc", "tiny_rolling"}
    assert cfg["n_samples"]["tiny_mc"]["effective"] == 4
    assert [(p["context_length"], p["stride"]) for p in doc["perplexity"]] == [(32, 16), (64, 16)]
    assert all(p["tokens"] > 0 and p["bytes"] == len(DOCS_TEXT.encode()) for p in doc["perplexity"])
    samples = [json.loads(line) for line in out_path.with_name("r.samples.jsonl").read_text().splitlines()]
    assert {s["task"] for s in samples} == {"tiny_mc", "tiny_rolling"} and len(samples) == 8
    assert not [p for p in out_path.parent.iterdir() if p.name.endswith(".tmp")]

    for fmt, needle in (("markdown", "| tiny_mc |"), ("csv", "tiny_mc,"), ("table", "tiny_mc")):
        r = neox(
            capsys, "-c", str(env["run"]), "--tasks", str(env["tasks"]["tiny_mc"]), "--limit", "2",
            "--output-path", str(env["root"] / "out" / f"{fmt}.json"), "--format", fmt,
        )  # fmt: skip
        assert r.code == 0 and needle in r.out, r.err


def test_default_output_is_under_the_checkpoint(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    r = neox(capsys, "-c", str(env["run"]), "--text", str(env["text"]), "--per-document")
    assert r.code == 0, r.err
    written = list((env["run"] / "eval").glob("results-*.json"))
    assert len(written) == 1
    row = json.loads(written[0].read_text())["perplexity"][0]
    assert row["mode"] == "per_document" and row["context_length"] == 64 == row["stride"]


def test_hf_directory_evaluates_like_its_checkpoint(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("safetensors")
    from neoxcli.convert.cli_ops import export_hf

    hf = env["root"] / "hf"
    export_hf(env["run"], hf)
    rows = []
    for src in (["-c", str(env["run"])], ["--hf", str(hf)]):
        out = env["root"] / f"hf-{len(rows)}.json"
        r = neox(capsys, *src, "--text", str(env["text"]), "--output-path", str(out))
        assert r.code == 0, r.err
        rows.append(json.loads(out.read_text())["perplexity"][0]["nll"])
    assert rows[0] == rows[1]


# --------------------------------------------------------------------------- bad input


def bad(capsys: pytest.CaptureFixture[str], root: Path, fragment: str, *args: str) -> None:
    before = files_under(root)
    expect_clean_error(neox(capsys, *args), fragment, before=before, root=root)


def test_bad_input_is_one_error_line_and_writes_nothing(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, text = str(env["run"]), str(env["text"])
    out = ["--output-path", str(tmp_path / "r.json")]
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: x\ndataset_path: json\n  output_type: [loglikelihood\n")
    not_a_task = tmp_path / "list.yaml"
    not_a_task.write_text("- a\n- b\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad(capsys, tmp_path, "does not parse (line 3)", "-c", run, "--tasks", str(broken), *out)
    bad(capsys, tmp_path, "needs a 'task'", "-c", run, "--tasks", str(not_a_task), *out)
    bad(capsys, tmp_path, "does not exist", "-c", run, "--tasks", str(tmp_path / "nope.yaml"), *out)
    bad(capsys, tmp_path, "no such file", "-c", run, "--text", str(tmp_path / "nope.txt"), *out)
    bad(capsys, tmp_path, "is empty", "-c", run, "--text", str(empty), *out)
    bad(capsys, tmp_path, "--stride 65 is larger", "-c", run, "--text", text, "--stride", "65", *out)
    bad(capsys, tmp_path, "--stride must be positive", "-c", run, "--text", text, "--stride", "0", *out)
    bad(capsys, tmp_path, "nothing to evaluate", "-c", run, *out)
    bad(capsys, tmp_path, "not found", "-c", str(tmp_path / "missing"), "--text", text, *out)
    bad(capsys, tmp_path, "no such directory", "--hf", str(tmp_path / "missing"), "--text", text, *out)

    learned = write_checkpoint(tmp_path / "learned", pos_emb="learned", seq_length=32)
    before = files_under(tmp_path)
    r = neox(capsys, "-c", str(learned), "--text", text, "--context-lengths", "32,64", *out)
    expect_clean_error(r, "exceeds the model's 32 learned positions", before=before, root=tmp_path)

    damaged = write_checkpoint(tmp_path / "damaged")
    states = next(damaged.glob("global_step1/mp_rank_00_model_states.pt"))
    states.write_bytes(states.read_bytes()[:200])
    bad(capsys, tmp_path, "global_step1", "-c", str(damaged), "--text", text, *out)

    # A task whose dataset lives on the Hub, with the Hub offline: named, and quick.
    hub_task = tmp_path / "hub.yaml"
    hub_task.write_text(
        "task: hub_task\ndataset_path: EleutherAI/lambada_openai\ndataset_name: default\ntest_split: test\n"
        "output_type: loglikelihood\ndoc_to_text: '{{text}}'\ndoc_to_target: ' x'\n"
    )
    bad(capsys, tmp_path, "EleutherAI/lambada_openai", "-c", run, "--tasks", str(hub_task), *out)

    # An unknown name, with suggestions (the built-in index is left out here to keep the test fast).
    import lm_eval.tasks

    real = lm_eval.tasks.TaskManager.__init__

    def local_only(self: Any, *a: Any, **kw: Any) -> None:
        real(self, *a, **{**kw, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks.TaskManager, "__init__", local_only)
    inc = ["--include-path", str(env["tasks"]["tiny_mc"].parent)]
    r = neox(capsys, "-c", run, "--tasks", "tiny_mcc", *inc, *out)
    expect_clean_error(r, "unknown task 'tiny_mcc'")
    assert "did you mean tiny_mc" in r.err

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    r = neox(capsys, "-c", run, "--tasks", "tiny_mc", *out)
    expect_clean_error(r, "lm-eval")
    assert "pip install 'neoxcli[eval]'" in r.err
