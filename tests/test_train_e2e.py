"""End to end: train a tiny model through DeepSpeed in-process, checkpoint, reload, resume, sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from conftest import tiny_train_config  # noqa: E402

from neoxcli.cli import main  # noqa: E402
from neoxcli.config import load_config  # noqa: E402
from neoxcli.training.report import NullReporter  # noqa: E402

pytestmark = pytest.mark.slow

_config = tiny_train_config


class _Recorder(NullReporter):
    """Keeps the name of each report the run made."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def on_start(self, info: object) -> None:
        self.events.append("start")

    def on_step(self, row: object) -> None:
        self.events.append("step")

    def on_eval(self, iteration: int, valid_loss: float) -> None:
        self.events.append("eval")

    def on_save(self, iteration: int, path: object) -> None:
        self.events.append("checkpoint")

    def on_end(self, result: object) -> None:
        self.events.append("end")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from neoxcli.training.trainer import train

    tmp = tmp_path_factory.mktemp("e2e")
    cfg = load_config([_config(tmp)])
    events: list[str] = []
    result = train(cfg, report=_Recorder(events))
    return tmp, cfg, result, events


def test_loss_falls_and_checkpoints_written(trained) -> None:
    tmp, _cfg, result, events = trained
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3]), losses
    assert result.valid_loss is not None and result.valid_loss < losses[0]
    run = tmp / "run"
    assert (run / "latest").read_text() == "global_step30"
    for step in (15, 30):
        tag = run / f"global_step{step}"
        assert (tag / "config.yml").is_file()
        assert (tag / "portable_pp00_tp00.pt").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 31))
    assert {"start", "step", "eval", "checkpoint", "end"} <= set(events)
    assert result.sample is not None


def test_reloaded_checkpoint_gives_identical_logits(trained) -> None:
    from neoxcli.checkpoint import load_for_inference

    tmp, _cfg, result, _ = trained
    model, tokenizer, cfg = load_for_inference(tmp / "run")
    x = torch.tensor([tokenizer.encode("the quick brown fox")])
    live = result.model
    live.eval()
    with torch.no_grad():
        assert torch.equal(model(x), live(x))
    assert cfg.model.hidden_size == 64


def test_resume_is_exact(trained) -> None:
    """Restart from the step-15 checkpoint: steps 16..30 reproduce the first run bit for bit."""
    from neoxcli.checkpoint import write_latest
    from neoxcli.training.trainer import train

    tmp, _cfg, result, _ = trained
    resumed = tmp / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp / "run" / "global_step15", resumed / "global_step15")
    write_latest(resumed, "global_step15")
    cfg = load_config([tmp / "tiny.yml"], [f"save={resumed}", f"load={resumed}", "sample_at_end=false"])
    again = train(cfg)
    first = {r["iteration"]: r["loss"] for r in result.history}
    second = {r["iteration"]: r["loss"] for r in again.history}
    assert sorted(second) == list(range(16, 31))
    assert all(second[i] == first[i] for i in second), (first, second)


def test_generate_is_deterministic_under_seed(trained, capsys: pytest.CaptureFixture[str]) -> None:
    tmp, *_ = trained
    args = [
        "generate",
        "-c",
        str(tmp / "run"),
        "--prompt",
        "the quick",
        "--max-new-tokens",
        "20",
        "--seed",
        "7",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("the quick") and len(first) > len("the quick")
    assert main(args[:-1] + ["8", "--greedy"]) == 0
    greedy_a = capsys.readouterr().out
    assert main(args[:-1] + ["9", "--greedy"]) == 0
    assert capsys.readouterr().out == greedy_a


def test_generate_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "-c", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: checkpoint not found")


def _resume_from_step15(tmp: Path, name: str) -> Path:
    from neoxcli.checkpoint import write_latest

    run = tmp / name
    run.mkdir()
    shutil.copytree(tmp / "run" / "global_step15", run / "global_step15")
    write_latest(run, "global_step15")
    return run


def _one_error(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "hint:"))]
    assert len([line for line in err if line.startswith("error:")]) == 1, err
    return err


def test_resume_from_a_broken_checkpoint_is_one_error(trained, capsys: pytest.CaptureFixture[str]) -> None:
    """A `latest` naming nothing, a truncated file and another model size each give one line, exit 2."""
    tmp, *_ = trained
    run = _resume_from_step15(tmp, "broken")
    args = ["train", str(tmp / "tiny.yml"), "--set", f"save={run}", "--set", f"load={run}"]
    args += ["--set", "sample_at_end=false"]

    (run / "latest").write_text("global_step99")
    assert main(args) == 2
    err = _one_error(capsys)
    assert err[0] == f"error: {run / 'latest'} names 'global_step99', which is not a directory in {run}"

    (run / "latest").write_text("global_step15")
    assert main([*args, "--set", "hidden_size=128"]) == 2
    err = _one_error(capsys)
    assert err[0] == (
        f"error: the checkpoint {run / 'global_step15'}: tensor 'layers.0.word_embeddings.weight' "
        "has shape [512, 64], the model needs [512, 128]"
    )
    assert (
        err[1]
        == "hint: the checkpoint was trained with other model settings: hidden_size: 64 there, 128 here"
    )

    (run / "global_step15" / "portable_pp00_tp00.pt").write_bytes(b"")
    assert main(args) == 2  # a bare EOFError used to be reported as "aborted", exit 130
    err = _one_error(capsys)
    assert err[0].startswith(f"error: cannot read {run / 'global_step15' / 'portable_pp00_tp00.pt'}: damaged")
    assert not (run / "global_step16").exists() and (run / "latest").read_text() == "global_step15"


def test_finished_run_says_nothing_is_left(trained, capsys: pytest.CaptureFixture[str]) -> None:
    tmp, *_ = trained
    run = tmp / "finished"
    shutil.copytree(tmp / "run", run)
    args = ["train", str(tmp / "tiny.yml"), "--set", f"save={run}", "--set", f"load={run}"]
    assert main([*args, "--set", "sample_at_end=false"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert f"the run in {run} is finished: iteration 30 of train_iters 30. To continue it, raise" in out
    assert "done" not in out and "0 tok/s" not in out
    assert (run / "latest").read_text() == "global_step30" and not (run / "global_step31").exists()


def test_run_directory_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file as save/load, `latest` naming a missing tag, an empty training split: one error line each."""
    cfg = _config(tmp_path, **{"train-iters": 2, "sample_at_end": False})
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest").write_text("global_step99")
    cases = [
        ([f"save={tmp_path / 'a-file'}"], "checkpoint.save:"),
        (["split=0,100,0", "load=null"], "the training split is empty"),
        ([], "names 'global_step99', which is not a directory in"),
        (
            ["tokenizer_type=HFTokenizer", f"vocab_file={tmp_path / 'nope.json'}"],
            f"tokenizer file not found: {tmp_path / 'nope.json'} (vocab_file)",
        ),
    ]
    for overrides, message in cases:
        sets = [arg for o in overrides for arg in ("--set", o)]
        assert main(["train", str(cfg), *sets]) == 2, overrides
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (overrides, err)


def test_extra_save_iters_zero_saves_the_initial_weights(tmp_path: Path) -> None:
    """As in GPT-NeoX (Pythia's configs list 0): global_step0 is saved before the first step, and resumes."""
    from neoxcli.checkpoint import write_latest
    from neoxcli.training.trainer import train

    over = {"train-iters": 4, "checkpoint-factor": None, "extra-save-iters": [0, 3], "sample_at_end": False}
    cfg = load_config([_config(tmp_path, **over)], ["load=null"])
    first = train(cfg)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("global_step*")) == [
        "global_step0",
        "global_step3",
        "global_step4",
    ]
    assert (run / "latest").read_text() == "global_step4"

    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(run / "global_step0", again / "global_step0")
    write_latest(again, "global_step0")
    resumed = train(load_config([tmp_path / "tiny.yml"], [f"save={again}", f"load={again}"]))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in first.history]


def test_compile_and_prefetch_train_like_eager(tmp_path: Path) -> None:
    """``compile: true`` (each block compiled) and ``num_workers`` give the eager run's losses."""
    from neoxcli.training.trainer import train

    over = {"train-iters": 4, "eval-interval": 4, "sample_at_end": False, "checkpoint-factor": None}
    eager_cfg = load_config([_config(tmp_path, save=str(tmp_path / "eager"), load=None, **over)])
    fast_cfg = load_config(
        [_config(tmp_path, save=str(tmp_path / "fast"), load=None, compile=True, num_workers=2, **over)]
    )
    eager = [row["loss"] for row in train(eager_cfg).history]
    fast = train(fast_cfg)
    assert np.allclose([row["loss"] for row in fast.history], eager, rtol=1e-5, atol=1e-5)
    assert all(
        hasattr(block, "_compiled_call_impl") and block._compiled_call_impl for block in fast.model.blocks
    )
    assert (tmp_path / "fast" / "inductor-cache").is_dir()


def test_generate_batches_an_input_file(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Prompts of an input file, K samples each, in batches: GPT-NeoX's fields, input order, batch-independent."""
    tmp, *_ = trained
    prompts = ["the quick", "pack my box with", "how", "the lazy dog jumps", "five"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    runs = {}
    for batch in ("1", "3"):
        out = tmp_path / f"b{batch}.jsonl"
        argv = ["generate", "-c", str(tmp / "run"), "--input-file", str(tmp_path / "prompts.txt")]
        argv += ["--output-file", str(out), "-n", "2", "--batch-size", batch, "--max-new-tokens", "12"]
        assert main([*argv, "--stop", "o"]) == 0
        runs[batch] = [json.loads(line) for line in out.read_text().splitlines()]
    assert "wrote 10 samples" in capsys.readouterr().err
    rows = runs["3"]
    assert [r["context"] for r in rows] == [p for p in prompts for _ in range(2)]
    assert [r["seed"] for r in rows] == list(range(1234, 1244))
    assert {"text", "length", "finished", "message", "duration_seconds", "temperature", "top_p"} <= set(
        rows[0]
    )
    assert all("o" not in r["text"] for r in rows)
    assert [(r["text"], r["finished"]) for r in rows] == [(r["text"], r["finished"]) for r in runs["1"]]
    assert not list(tmp_path.glob(".*partial"))
    txt = tmp_path / "samples.txt"
    assert main(["generate", "-c", str(tmp / "run"), "-n", "3", "--output-file", str(txt)]) == 0
    assert txt.read_text().count("=== sample ") == 3


def test_unconditional_samples_are_separated(trained, capsys: pytest.CaptureFixture[str]) -> None:
    tmp, *_ = trained
    assert main(["generate", "-c", str(tmp / "run"), "-n", "3", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("--- sample")] == [
        "--- sample 1/3 ---",
        "--- sample 2/3 ---",
        "--- sample 3/3 ---",
    ]


def test_generate_from_gpt_neox_generation_config(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`neox generate cfg.yml text_generation.yml` as GPT-NeoX's generate.py reads them."""
    tmp, *_ = trained
    (tmp_path / "prompts.txt").write_text("the quick<END>pack my\nbox<END>")
    model_cfg = tmp_path / "model.yml"
    model_cfg.write_text(f"num-layers: 2\nload: {tmp / 'run'}\n")
    gen_cfg = tmp_path / "text_generation.yml"
    out = tmp_path / "out.jsonl"
    gen_cfg.write_text(
        "text_gen_type: input-file\nmaximum_tokens: 6\ntemperature: 0.0\ntop_p: 0.0\ntop_k: 0\n"
        f"prompt_end: '<END>'\nsample_input_file: {tmp_path / 'prompts.txt'}\nsample_output_file: {out}\n"
        "return_logits: true\n"
    )
    assert main(["generate", str(model_cfg), str(gen_cfg)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["context"] for r in rows] == ["the quick", "pack my\nbox"]
    assert all(r["temperature"] == 0.0 and r["length"] <= 6 for r in rows)
    assert all(
        len(r["logits"]) == r["length"] and all(isinstance(x, float) for x in r["logits"]) for r in rows
    )
    greedy = tmp_path / "greedy.jsonl"
    argv = ["generate", "-c", str(tmp / "run"), "-p", "the quick", "--greedy", "--max-new-tokens", "6"]
    assert main([*argv, "--output-file", str(greedy)]) == 0
    assert json.loads(greedy.read_text())["text"] == rows[0]["text"]
    gen_cfg.write_text("maximum_tokns: 6\n")
    capsys.readouterr()
    assert main(["generate", str(model_cfg), str(gen_cfg)]) == 2
    assert "did you mean 'maximum_tokens'" in capsys.readouterr().err
