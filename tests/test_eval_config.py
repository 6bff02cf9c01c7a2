"""GPT-NeoX's ``eval_tasks`` / ``eval_results_prefix``: ``neox eval cfg.yml`` and evaluation at the end of ``neox train``.

``neox eval cfg.yml [more.yml]`` reads the merged files as GPT-NeoX's
``eval.py`` does (``load`` names the checkpoint, ``eval_tasks`` the tasks,
``eval_results_prefix`` the results file); ``neox train`` with ``eval_tasks``
scores its final checkpoint and logs ``eval/{task}/{metric}`` rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lm_eval")

from conftest import tiny_train_config  # noqa: E402
from eval_tasks import DOCS_TEXT, write_checkpoint, write_tasks  # noqa: E402
from reliability.harness import Outcome, expect_clean_error, files_under  # noqa: E402

from neoxcli.cli import main  # noqa: E402


def neox(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def test_config_files_name_checkpoint_tasks_and_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    torch.set_num_threads(1)
    run = write_checkpoint(tmp_path / "run")
    tasks = write_tasks(tmp_path / "tasks", docs=4)
    model_cfg = tmp_path / "model.yml"
    model_cfg.write_text(yaml.safe_dump({"num-layers": 2, "load": str(run), "eval_tasks": ["nope"]}))
    eval_cfg = tmp_path / "eval.yml"
    prefix = tmp_path / "out" / "pythia"
    (tmp_path / "out").mkdir()
    eval_cfg.write_text(  # the later file wins, as GPT-NeoX merges its files
        yaml.safe_dump({"eval_tasks": [str(tasks["tiny_mc"])], "eval_results_prefix": str(prefix)})
    )
    text = tmp_path / "valid.txt"
    text.write_text(DOCS_TEXT)
    r = neox(
        capsys,
        str(model_cfg),
        str(eval_cfg),
        "--text",
        str(text),
        "--bootstrap-iters",
        "0",
        "--format",
        "json",
    )
    assert r.code == 0, r.err
    (written,) = (tmp_path / "out").glob("pythia_eval_results_*.json")
    # GPT-NeoX's name: {prefix}_eval_results_%m-%d-%Y-%H-%M-%S.json
    stamp = written.name.removeprefix("pythia_eval_results_").removesuffix(".json")
    assert [len(p) for p in stamp.split("-")] == [2, 2, 4, 2, 2, 2]
    doc = json.loads(written.read_text())
    assert doc == json.loads(r.out)
    assert doc["config"]["checkpoint"] == str(run.resolve()) and doc["config"]["tag"] == "global_step1"
    assert set(doc["metrics"]) == {"tiny_mc"} and 0.0 <= doc["metrics"]["tiny_mc"]["acc"]["value"] <= 1.0
    assert [row["source"] for row in doc["perplexity"]] == [str(text)]  # --text adds to eval_tasks

    # Flags win over the files: --tasks replaces eval_tasks, --output-path the prefix.
    out = tmp_path / "flag.json"
    r = neox(
        capsys, str(model_cfg), "--tasks", str(tasks["tiny_ll"]), "--output-path", str(out),
        "--bootstrap-iters", "0",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert set(json.loads(out.read_text())["metrics"]) == {"tiny_ll"}


def test_config_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_load = tmp_path / "no_load.yml"
    no_load.write_text(yaml.safe_dump({"eval_tasks": ["tiny_mc"]}))
    no_tasks = tmp_path / "no_tasks.yml"
    no_tasks.write_text(yaml.safe_dump({"load": str(tmp_path / "run")}))
    typo = tmp_path / "typo.yml"
    typo.write_text(yaml.safe_dump({"eval_task": ["tiny_mc"], "load": str(tmp_path / "run")}))
    before = files_under(tmp_path)
    expect_clean_error(neox(capsys, str(no_load)), "name no `load`", before=before, root=tmp_path)
    expect_clean_error(neox(capsys, str(no_tasks)), "set no eval_tasks", before=before, root=tmp_path)
    expect_clean_error(neox(capsys, str(typo)), "eval_task", before=before, root=tmp_path)
    expect_clean_error(
        neox(capsys, str(tmp_path / "missing.yml")), "missing.yml", before=before, root=tmp_path
    )
    r = neox(capsys, "--list-tasks", "a", "b")
    expect_clean_error(r, "one PATTERN")


def test_one_string_of_tasks_is_a_list() -> None:
    from neoxcli.config.schema import EvalConfig

    assert EvalConfig(eval_tasks="lambada_openai, piqa").eval_tasks == ["lambada_openai", "piqa"]


@pytest.mark.slow
def test_train_with_eval_tasks_logs_the_final_checkpoint(tmp_path: Path) -> None:
    """Four steps of a character-level model, then the local task on its last save: rows in metrics.jsonl."""
    pytest.importorskip("deepspeed")
    from neoxcli.config import load_config
    from neoxcli.training.report import NullReporter
    from neoxcli.training.trainer import train

    tasks = write_tasks(tmp_path / "tasks", docs=4)
    over = {
        "train-iters": 4,
        "checkpoint-factor": None,
        "sample_at_end": False,
        "eval_tasks": [str(tasks["tiny_mc"]), str(tasks["tiny_rolling"])],
    }
    cfg = load_config([tiny_train_config(tmp_path, **over)])

    class Infos(NullReporter):
        lines: list[str] = []

        def on_info(self, message: str) -> None:
            self.lines.append(message)

    report = Infos()
    result = train(cfg, report=report)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    assert len(evals) == 1 and evals[0]["iteration"] == 4
    row: dict[str, Any] = evals[0]
    assert 0.0 <= row["eval/tiny_mc/acc"] <= 1.0 and row["eval/tiny_mc/acc_stderr"] > 0
    assert row["eval/tiny_rolling/word_perplexity"] > 1.0
    assert "eval/tiny_rolling/word_perplexity_stderr" not in row  # lm-eval's "N/A" is no number
    assert result.history[-1] == row
    (doc_path,) = (tmp_path / "run" / "eval").glob("results-*.json")
    doc = json.loads(doc_path.read_text())
    assert doc["config"]["tag"] == "global_step4"
    assert doc["metrics"]["tiny_mc"]["acc"]["value"] == row["eval/tiny_mc/acc"]
    assert any(line.startswith("eval tiny_mc: acc ") for line in report.lines)

    # A task that cannot run is reported (training is done and saved), not raised, and logs nothing.
    from neoxcli.evaluation.run import evaluate_after_training

    cfg.eval.eval_tasks = [str(tmp_path / "no_such_task.yaml")]
    logged: list[dict[str, Any]] = []
    assert (
        evaluate_after_training(cfg, tmp_path / "run" / "global_step4", 4, logged.append, report.on_info)
        == {}
    )
    assert logged == [] and "does not exist" in report.lines[-1]
    assert report.lines[-1].startswith("eval_tasks not evaluated: task file ")
