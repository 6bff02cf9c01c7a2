"""Finetuning: a Pythia-shaped Hugging Face model (random, tiny, built here) trained by neox and exported back.

One module fixture builds the model, its tokenizer and a corpus, imports the
model with ``neox convert --from hf`` and finetunes it for a few steps. The
tests then check the exported model learned, that a Hugging Face directory
given directly as ``load`` trains identically, that the weights load under
another layout (tensor parallel 2, one 2-process launch), and what a resume
says when its settings or its model differ from the checkpoint's.

A tiny character-level model then covers the other starting points: a
GPT-NeoX checkpoint imported with ``neox convert --from neox``, a 2-process
ZeRO-3 job, a ``save_optimizer: false`` save, a checkpoint in object storage
(moto's S3 server on 127.0.0.1), and what ``no_load_rng`` leaves out of a resume.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from procs import moto_server, run_ranks

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")
transformers = pytest.importorskip("transformers")

from neoxcli.cli import main  # noqa: E402
from neoxcli.config import load_config  # noqa: E402
from neoxcli.training.report import NullReporter  # noqa: E402

pytestmark = pytest.mark.slow

DOCS = [
    "the quick brown fox jumps over the lazy dog. ",
    "pack my box with five dozen liquor jugs. ",
    "how vexingly quick daft zebras jump! ",
]
ITERS = 15


class _Lines(NullReporter):
    """Keeps every info line of a run."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def on_info(self, message: str) -> None:
        self.lines.append(message)


def _train(config: Path, *overrides: str, report: NullReporter | None = None) -> Any:
    from neoxcli.training.trainer import train

    return train(load_config([config], list(overrides)), report=report)


def _write_config(root: Path, name: str, **over: Any) -> Path:
    cfg: dict[str, Any] = {
        "tokenizer_type": "HFTokenizer",
        "vocab_file": str(root / "tokenizer.json"),
        "data_path": str(root / "data" / "text_document"),
        "split": "100,0,0",
        "seq_length": 32,
        "train_micro_batch_size_per_gpu": 8,
        "train_iters": ITERS,
        "optimizer": {"type": "Adam", "params": {"lr": 5e-3}},
        "lr_decay_style": "constant",
        "warmup": 0.0,
        "eval_iters": 0,
        "finetune": True,
        "load": str(root / "imported"),
        "save": str(root / name),
        "sample_at_end": False,
        "seed": 7,
    }
    cfg.update(over)
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config: Path, ranks: int) -> None:
    """Train ``config`` as a ``ranks``-process job on this machine (gloo, one worker per rank)."""
    run_ranks(
        ["-m", "neoxcli.training.worker", "--config", str(config)],
        config.parent,
        ranks=ranks,
        label=f"{config.stem}-",
    )


def _windows(root: Path, n: int = 16, length: int = 32) -> torch.Tensor:
    """The first ``n`` training-length windows of the corpus, for scoring a model on it."""
    from neoxcli.data.indexed import IndexedDataset

    ds = IndexedDataset(str(root / "data" / "text_document"))
    flat = torch.cat([torch.as_tensor(ds[i].astype("int64")) for i in range(len(ds))])
    return flat[: n * length].view(n, length)


def _hf_loss(hf_dir: Path, windows: torch.Tensor) -> float:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return float(model(input_ids=windows, labels=windows).loss)


@pytest.fixture(scope="module")
def pythia(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A random Pythia-shaped model (untied head, parallel residual, partial rotary), imported and finetuned."""
    import numpy as np

    from neoxcli.data.indexed import IndexedDatasetWriter
    from neoxcli.data.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("finetune")
    tok = train_bpe_tokenizer(DOCS * 20, vocab_size=300, out_path=root / "tokenizer.json", min_frequency=1)
    (root / "data").mkdir()
    with IndexedDatasetWriter(root / "data" / "text_document", np.uint16) as w:
        for i in range(240):
            w.add_document(tok.encode(DOCS[i % 3] + DOCS[(i + 1) % 3]) + [tok.eod_id])
    torch.manual_seed(0)
    hf_cfg = transformers.GPTNeoXConfig(
        vocab_size=384,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )
    hf_dir = root / "hf"
    transformers.GPTNeoXForCausalLM(hf_cfg).save_pretrained(str(hf_dir))
    shutil.copyfile(root / "tokenizer.json", hf_dir / "tokenizer.json")
    assert main(["convert", str(hf_dir), "--from", "hf", str(root / "imported")]) == 0
    report = _Lines()
    result = _train(_write_config(root, "ft"), report=report)
    return {"root": root, "hf": hf_dir, "result": result, "lines": report.lines}


def test_finetuned_import_exports_a_model_that_learned(pythia: dict[str, Any]) -> None:
    """Import → finetune from iteration 0 → `neox convert --to hf`: the HF model's loss on the data went down."""
    from neoxcli.checkpoint import holds_training_state

    root, result = pythia["root"], pythia["result"]
    # What the importer wrote has weights only; DeepSpeed's loader failed on it (KeyError: 'dp_world_size').
    assert not holds_training_state(root / "imported" / "global_step0")
    assert holds_training_state(root / "ft" / f"global_step{ITERS}")
    assert any(line.startswith("finetuning from the weights of") for line in pythia["lines"])
    assert [row["iteration"] for row in result.history] == list(range(1, ITERS + 1))
    assert result.checkpoint == root / "ft" / f"global_step{ITERS}"
    out = root / "exported"
    assert main(["convert", str(root / "ft"), "--to", "hf", str(out)]) == 0
    windows = _windows(root)
    before, after = _hf_loss(pythia["hf"], windows), _hf_loss(out, windows)
    assert after < before - 1.0, (before, after)


def test_hugging_face_directory_as_load_trains_like_its_import(
    pythia: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root, hf = pythia["root"], pythia["hf"]
    direct = _train(_write_config(root, "ft-direct", load=str(hf)))
    assert [r["loss"] for r in direct.history] == pytest.approx(
        [r["loss"] for r in pythia["result"].history], abs=1e-6
    )
    saved = load_config([root / "ft-direct" / f"global_step{ITERS}" / "config.yml"])
    assert (saved.model.hidden_size, saved.model.intermediate_size, saved.model.seq_length) == (32, 128, 32)

    # The model comes from config.json: a model key of the config's own that disagrees is one error.
    config = _write_config(root, "ft-wrong", load=str(hf), hidden_size=64)
    assert main(["train", str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "hint:"))]
    assert err[0] == f"error: model.hidden_size: 64 in the config, but the Hugging Face model in {hf} has 32"
    assert main(["train", str(config), "--set", "finetune=false", "--set", "hidden_size=32"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [
        f"error: checkpoint.load: {hf} is a Hugging Face model directory, not a neox checkpoint to resume"
    ]
    assert not (root / "ft-wrong").exists()


def test_finetune_loads_under_another_layout(pythia: dict[str, Any]) -> None:
    """The 1-process checkpoint finetuned with tensor parallel 2: the weights arrive intact (lr 0, one step)."""
    from neoxcli.checkpoint import load_module_state

    root = pythia["root"]
    config = _write_config(
        root,
        "ft-tp2",
        load=str(root / "ft"),
        model_parallel_size=2,
        train_iters=1,
        optimizer={"type": "Adam", "params": {"lr": 0.0}},
        weight_decay=0.0,
    )
    _launch(config, ranks=2)
    source = load_module_state(root / "ft" / f"global_step{ITERS}")
    tp2 = load_module_state(root / "ft-tp2" / "global_step1")
    assert set(tp2) == set(source)
    for name, value in source.items():
        # Tensor parallel 2 pads the 300-token vocabulary to 512 rows instead of 384.
        got = (
            tp2[name][: value.shape[0]]
            if name.endswith(("word_embeddings.weight", "final_linear.weight"))
            else tp2[name]
        )
        torch.testing.assert_close(got, value, rtol=0, atol=0, msg=name)


def test_resume_reports_changed_settings_and_no_load_optim_keeps_the_schedule(
    pythia: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = pythia["root"]
    moved = root / "data-moved"
    shutil.copytree(root / "data", moved)
    runs = {}
    for name in ("resume", "fresh-optim"):
        shutil.copytree(root / "ft", root / name, ignore=shutil.ignore_patterns("index-cache"))
    full, fresh = _Lines(), _Lines()
    common = ["finetune=false", f"train_iters={ITERS + 2}", "lr_decay_style=linear", "min_lr=1e-4"]
    runs["resume"] = _train(
        root / "ft.yml",
        *common,
        f"load={root / 'resume'}",
        f"save={root / 'resume'}",
        f"data_path={moved / 'text_document'}",
        report=full,
    )
    runs["fresh"] = _train(
        root / "ft.yml",
        *common,
        f"load={root / 'fresh-optim'}",
        f"save={root / 'fresh-optim'}",
        "no_load_optim=true",
        "no_load_rng=true",
        report=fresh,
    )
    warning = next(line for line in full.lines if line.startswith("warning:"))
    assert warning.splitlines()[1:] == [
        f"  data_path: {root / 'data' / 'text_document'} → {moved / 'text_document'}",
        "  lr_decay_style: constant → linear",
        "  min_lr: 0.0 → 0.0001",
        "  hint: to start a new schedule from these weights instead, set finetune: true (with a new save directory)",
    ]
    assert any("at iteration 15 with a fresh optimizer state (no_load_optim)" in line for line in fresh.lines)
    resumed, restarted = runs["resume"].history, runs["fresh"].history
    assert [r["iteration"] for r in resumed] == [r["iteration"] for r in restarted] == [ITERS + 1, ITERS + 2]
    # Same weights, data position and schedule: the first step's loss and every LR agree; the second
    # loss differs, since one step's update used Adam moments restored and the other fresh ones.
    assert restarted[0]["loss"] == pytest.approx(resumed[0]["loss"], abs=1e-6)
    assert [r["lr"] for r in restarted] == pytest.approx([r["lr"] for r in resumed])
    assert abs(restarted[1]["loss"] - resumed[1]["loss"]) > 1e-4

    # A model that cannot take the checkpoint's weights: one line naming the tensor and both shapes.
    tag = root / "resume" / f"global_step{ITERS + 2}"
    assert main(["train", str(tag / "config.yml"), "--set", "intermediate_size=96"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "hint:"))]
    assert err == [
        f"error: the checkpoint {tag}: tensor 'layers.1.mlp.dense_h_to_4h.weight' has shape [128, 32], "
        "the model needs [96, 32]",
        "hint: the checkpoint was trained with other model settings: intermediate_size: 128 there, 96 here",
    ]


def test_vocabulary_padding_rows_are_cut_or_kept_from_the_new_model() -> None:
    """Only rows past the tokenizer's vocabulary change; any other shape difference is left to the fit check."""
    from neoxcli.training.finetune import fit_vocab_rows

    saved = {"emb": torch.arange(12.0).view(6, 2), "mlp": torch.zeros(3, 2)}
    fitted = fit_vocab_rows(saved, {"emb": torch.full((4, 2), -1.0), "mlp": torch.zeros(5, 2)}, vocab=4)
    assert fitted["emb"].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert fitted["mlp"].shape == (3, 2)
    grown = fit_vocab_rows({"emb": saved["emb"]}, {"emb": torch.full((8, 2), -1.0)}, vocab=5)
    assert grown["emb"][:6].equal(saved["emb"]) and grown["emb"][6:].eq(-1).all()
    assert fit_vocab_rows({"emb": saved["emb"]}, {"emb": torch.zeros(4, 2)}, vocab=5)["emb"].shape == (6, 2)


# Finetunes of a tiny character-level model: from a GPT-NeoX import, a ZeRO-3 job, a weights-only
# save, RNG-free resumes and a checkpoint in object storage.


def _char_config(root: Path, name: str, model: bool = True, **over: Any) -> Path:
    """A 2-layer character-level run on ``root``'s corpus; ``model=False`` leaves the model to ``load``."""
    from conftest import write_char_corpus

    if not (root / "data").exists():
        (root / "data").mkdir()
        write_char_corpus(root / "data" / "text_document")
    cfg: dict[str, Any] = {
        "tokenizer_type": "CharLevelTokenizer",
        "data_path": str(root / "data" / "text_document"),
        "split": "100,0,0",
        "seq_length": 32,
        "train_micro_batch_size_per_gpu": 4,
        "train_iters": 2,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-2}},
        "lr_decay_style": "cosine",
        "warmup": 0.0,
        "eval_iters": 0,
        "sample_at_end": False,
        "seed": 11,
        "save": str(root / name),
        "load": str(root / name),
    }
    if model:
        cfg.update(num_layers=2, hidden_size=32, num_attention_heads=4, pos_emb="rotary", rotary_pct=0.5)
    cfg.update(over)
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


#: One step that changes no weight: the finetuned checkpoint holds exactly the weights it loaded.
FROZEN = {"train_iters": 1, "optimizer": {"type": "Adam", "params": {"lr": 0.0}}, "weight_decay": 0.0}


def _assert_same_weights(got_tag: Path, want_tag: Path) -> None:
    from neoxcli.checkpoint import load_module_state

    got, want = load_module_state(got_tag), load_module_state(want_tag)
    assert set(got) == set(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


def _gpt_neox_state(model: Any) -> dict[str, Any]:
    """Our state dict under GPT-NeoX's ``sequential`` numbering (two weightless lambdas around the blocks)."""
    n = model.cfg.num_layers
    index = {0: 0, **{i: i + 1 for i in range(1, n + 1)}, n + 1: n + 3, n + 2: n + 4}
    out = {}
    for key, value in model.state_dict().items():
        _, layer, rest = key.split(".", 2)
        out[f"sequential.{index[int(layer)]}.{rest}"] = value.clone()
    return out


GPT_NEOX_YML = """\
{
  "num-layers": 2, "hidden-size": 32, "num-attention-heads": 4, "seq-length": 32,
  "max-position-embeddings": 32, "pos-emb": "rotary", "rotary-pct": 0.25, "no-weight-tying": true,
  "gpt-j-residual": true, "tokenizer-type": "CharLevelTokenizer", "train-iters": 100,
}
"""


def test_finetune_from_a_gpt_neox_import_starts_from_its_weights(tmp_path: Path) -> None:
    """GPT-NeoX run → `neox convert --from neox` → finetune: the first loss is the GPT-NeoX weights' own."""
    import torch.nn.functional as F

    from neoxcli.config.schema import ModelConfig
    from neoxcli.model import GPTModel
    from neoxcli.training.batches import BatchSampler
    from neoxcli.training.data import build_datasets

    model_cfg = ModelConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        seq_length=32,
        pos_emb="rotary",
        rotary_pct=0.25,
        gpt_j_residual=True,
        no_weight_tying=True,
    )
    torch.manual_seed(5)
    theirs = GPTModel(model_cfg, 512).eval()
    step = tmp_path / "gpt-neox-run" / "global_step10"
    (step / "configs").mkdir(parents=True)
    torch.save({"module": _gpt_neox_state(theirs)}, step / "mp_rank_00_model_states.pt")
    (step / "configs" / "tiny.yml").write_text(GPT_NEOX_YML)
    (step.parent / "latest").write_text("global_step10")
    assert main(["convert", str(step.parent), "--from", "neox", str(tmp_path / "imported")]) == 0

    report = _Lines()
    config = _char_config(
        tmp_path, "ft", model=False, finetune=True, load=str(tmp_path / "imported"), train_iters=3
    )
    result = _train(config, report=report)
    assert any(
        line.startswith(f"finetuning from the weights of {tmp_path / 'imported' / 'global_step10'}")
        for line in report.lines
    )
    assert [row["iteration"] for row in result.history] == [1, 2, 3]
    assert result.checkpoint == tmp_path / "ft" / "global_step3"

    # The first global batch, read as the run reads it, scored by the model GPT-NeoX saved.
    cfg = load_config([config])
    train_ds, _, _ = build_datasets(
        cfg, train_batch=4, cache_dir=tmp_path / "index", rank=0, barrier=lambda: None, vocab_size=512
    )
    x, y = BatchSampler(train_ds, 4, 1, 0).batch(0, 0)
    with torch.no_grad():
        direct = float(F.cross_entropy(theirs(x).flatten(0, 1), y.flatten()))
    assert result.history[0]["loss"] == pytest.approx(direct, abs=1e-5)
    assert result.history[-1]["loss"] < direct


def test_finetune_from_a_zero3_job_into_one_process(tmp_path: Path) -> None:
    """A 2-process ZeRO-3 checkpoint finetuned by one ZeRO-0 process: every weight arrives exactly (lr 0)."""
    import json

    _launch(_char_config(tmp_path, "zero3", zero_optimization={"stage": 3}), ranks=2)
    source = tmp_path / "zero3" / "global_step2"
    layout = json.loads((source / "layout.json").read_text())
    assert (layout["dp"], layout["zero_stage"]) == (2, 3)
    config = _char_config(
        tmp_path,
        "ft",
        model=False,
        finetune=True,
        load=str(tmp_path / "zero3"),
        zero_optimization={"stage": 0},
        **FROZEN,
    )
    result = _train(config)
    assert [row["iteration"] for row in result.history] == [1]
    _assert_same_weights(tmp_path / "ft" / "global_step1", source)


def test_finetune_from_a_weights_only_checkpoint_while_a_resume_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from neoxcli.checkpoint.portable import is_weights_only

    _train(_char_config(tmp_path, "release", save_optimizer=False))
    source = tmp_path / "release" / "global_step2"
    assert is_weights_only(source)
    config = _char_config(
        tmp_path, "ft", model=False, finetune=True, load=str(tmp_path / "release"), **FROZEN
    )
    assert [row["iteration"] for row in _train(config).history] == [1]
    _assert_same_weights(tmp_path / "ft" / "global_step1", source)

    capsys.readouterr()
    assert main(["train", str(tmp_path / "release.yml"), "--set", "train_iters=4"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [
        f"error: {source} holds weights only (saved with save_optimizer: false), so a run cannot resume "
        "from it exactly"
    ]
    assert not (tmp_path / "release" / "global_step4").exists()


DROPOUT = {"hidden_dropout": 0.1, "attention_dropout": 0.1, "train_iters": 4, "checkpoint_factor": 2}


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """4 steps with dropout (so each step draws from the RNG), saved at steps 2 and 4; with its metrics."""
    root = tmp_path_factory.mktemp("dropout")
    return root, _train(_char_config(root, "src", **DROPOUT)).history


def _from_step_2(root: Path, name: str) -> Path:
    """A copy of the dropout run holding only its step-2 checkpoint, and a config resuming it."""
    run = root / name
    shutil.copytree(root / "src", run, ignore=shutil.ignore_patterns("global_step4", "metrics.jsonl"))
    (run / "latest").write_text("global_step2")
    return _char_config(root, name, **DROPOUT)


def test_no_load_rng_restores_counters_and_optimizer_but_not_the_random_streams(
    dropout_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    from neoxcli.checkpoint import load_client_state
    from neoxcli.parallel.distributed import detect
    from neoxcli.training.run import build_run

    root, source = dropout_run
    exact = _train(_from_step_2(root, "exact")).history
    fresh = _train(_from_step_2(root, "fresh-rng"), "no_load_rng=true").history
    # Restored random streams draw the same dropout masks: the resumed steps are the source's, bit for bit.
    assert [(r["loss"], r["lr"]) for r in exact] == [(r["loss"], r["lr"]) for r in source[2:]]
    assert [r["iteration"] for r in fresh] == [3, 4]
    assert [r["lr"] for r in fresh] == [r["lr"] for r in source[2:]]
    assert fresh[0]["loss"] != exact[0]["loss"]

    # What each start restored, read from the built runs before any step.
    client, _ = load_client_state(root / "src" / "global_step2")
    built = {}
    for name, extra in (("exact", []), ("fresh-rng", ["no_load_rng=true"])):
        cfg = load_config(
            [root / f"{name}.yml"], ["load_tag=global_step2", f"save={root / 'unused'}", *extra]
        )
        run = build_run(cfg, detect(), NullReporter())
        built[name] = (run, torch.get_rng_state())
        run.sampler.close()
    (a, rng_a), (b, rng_b) = built["exact"], built["fresh-rng"]
    assert (a.iteration, a.consumed) == (b.iteration, b.consumed) == (2, 8)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    moments_a, moments_b = a.engine.optimizer.state_dict()["state"], b.engine.optimizer.state_dict()["state"]
    assert moments_a.keys() == moments_b.keys() and moments_a
    for key, state in moments_a.items():
        for field, value in state.items():
            torch.testing.assert_close(moments_b[key][field], value, rtol=0, atol=0)
    assert rng_a.equal(client["rng"][0]["torch"])
    assert not rng_b.equal(client["rng"][0]["torch"])


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """An S3 client and a new bucket on moto's S3-compatible server, started on 127.0.0.1 for this test."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    from neoxcli.checkpoint.s3 import client

    with moto_server(tmp_path / "moto.log") as url:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": url,
        }.items():
            monkeypatch.setenv(key, value)
        s3 = client()
        s3.create_bucket(Bucket="runs")
        yield s3, "runs"


def test_finetune_from_a_checkpoint_in_object_storage(
    dropout_run: tuple[Path, list[dict[str, Any]]], bucket: tuple[Any, str], tmp_path: Path
) -> None:
    """`load: s3://…` with finetune: the named tag is downloaded and its weights (and model) are the start."""
    from neoxcli.checkpoint.s3 import upload_tag

    s3, name = bucket
    root, _ = dropout_run
    for tag in ("global_step2", "global_step4"):
        upload_tag(s3, root / "src" / tag, f"s3://{name}/src", 5 * 1024 * 1024)
    report = _Lines()
    config = _char_config(root, "ft-s3", model=False, finetune=True, load=f"s3://{name}/src", **FROZEN)
    assert [row["iteration"] for row in _train(config, report=report).history] == [1]
    cache = root / "ft-s3" / "s3-cache" / name / "src"
    assert any(
        line.startswith(f"finetuning from the weights of {cache / 'global_step4'}") for line in report.lines
    )
    _assert_same_weights(root / "ft-s3" / "global_step1", root / "src" / "global_step4")

    # Again with --overwrite into the same save directory, from an older tag of the bucket.
    assert main(["train", str(config), "--overwrite", "--set", "load_tag=global_step2"]) == 0
    _assert_same_weights(root / "ft-s3" / "global_step1", root / "src" / "global_step2")


def test_deepspeed_zero3_partitions_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ZeRO-3 with DeepSpeed's own files keeps no full weights to start from: said so, nothing written."""
    _train(
        _char_config(
            tmp_path, "zero3-ds", zero_optimization={"stage": 3}, portable_checkpoint=False, train_iters=1
        )
    )
    source = tmp_path / "zero3-ds" / "global_step1"
    config = _char_config(tmp_path, "ft", model=False, finetune=True, load=str(source.parent), **FROZEN)
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [
        f"error: {source} holds DeepSpeed's ZeRO-3 partitions (saved with portable_checkpoint: false), "
        "not the full model's weights"
    ]
    assert not (tmp_path / "ft" / "global_step1").exists()
