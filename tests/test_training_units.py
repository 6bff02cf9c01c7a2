"""Training semantics against GPT-NeoX's: LR schedule values, optimizer settings, eval and save steps.

The expected numbers are worked out by hand from GPT-NeoX's formulas
(megatron/learning_rates.py, AnnealingLR.get_lr): warmup ``lr * n / w`` while
``n <= w``; then, with ``d = n - w`` and ``s = decay_iters - w``, linear
``lr * (s - d) / s``, cosine ``min + (lr - min) / 2 * (cos(pi * d / s) + 1)``,
exponential ``lr * exp(-0.693 * d / s)``; everything floored at ``min_lr``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neoxcli.config.schema import ModelConfig, NeoXConfig, OptimizerConfig, TrainConfig
from neoxcli.training.schedule import AnnealingLR, lr_at

MAX, MIN = 6e-4, 6e-5


def _lr(n: float, style: str, *, decay: int = 100, warmup: float = 10.0, min_lr: float = MIN) -> float:
    return lr_at(int(n), max_lr=MAX, min_lr=min_lr, warmup_iters=warmup, decay_iters=decay, style=style)


@pytest.mark.parametrize(
    ("n", "style", "expected"),
    [
        # warmup from 0; the step equal to warmup_iters is still warmup (== max_lr)
        (0, "linear", 0.0),
        (5, "cosine", 3e-4),
        (10, "exponential", 6e-4),
        (10, "constant", 6e-4),
        (3, "constant", 1.8e-4),
        (500, "constant", 6e-4),
        # linear: (90 - d) / 90 of max_lr, floored at min_lr
        (55, "linear", 3e-4),
        (82, "linear", 1.2e-4),
        (100, "linear", MIN),
        (150, "linear", MIN),
        # cosine between max_lr and min_lr
        (40, "cosine", 4.65e-4),
        (55, "cosine", 3.3e-4),
        (100, "cosine", MIN),
        # exponential: 6e-4 * exp(-0.693 * d / 90), and it keeps decaying past decay_iters
        (55, "exponential", 4.2429529e-4),
        (100, "exponential", 3.0004416e-4),
        (190, "exponential", 1.5004416e-4),
        (1000, "exponential", MIN),
    ],
)
def test_lr_matches_gpt_neox(n: int, style: str, expected: float) -> None:
    assert _lr(n, style) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_cosine_holds_min_lr_past_decay_iters() -> None:
    # GPT-NeoX's formula would climb back to max_lr at d = 2s (step 190 here); neox holds min_lr.
    assert [_lr(n, "cosine") for n in (101, 145, 190, 400)] == [MIN] * 4


@pytest.mark.parametrize(
    ("style", "expected"),
    [("linear", 0.0), ("cosine", 0.0), ("exponential", 3.0004416e-4)],
)
def test_decay_span_shorter_than_one_step(style: str, expected: float) -> None:
    # decay_iters 10, warmup 0.95: warmup_iters 9.5 and a decay span of 0.5 steps, so
    # step 10 is the end of the decay (GPT-NeoX divides by 0.5, not by 1).
    assert _lr(9, style, decay=10, warmup=9.5, min_lr=0.0) == pytest.approx(6e-4 * 9 / 9.5)
    assert _lr(10, style, decay=10, warmup=9.5, min_lr=0.0) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_no_warmup_starts_at_max_lr() -> None:
    assert _lr(0, "linear", warmup=0.0) == MAX
    assert _lr(0, "cosine", warmup=0.0) == MAX
    assert _lr(50, "linear", warmup=0.0) == pytest.approx(3e-4)


def test_full_warmup_then_min_lr() -> None:
    # warmup: 1.0 leaves no decay span; past it the schedule is done.
    assert _lr(100, "cosine", decay=100, warmup=100.0) == pytest.approx(MAX)
    assert _lr(101, "linear", decay=100, warmup=100.0) == MIN


def test_schedule_lengths_from_config() -> None:
    from neoxcli.config.derived import lr_schedule_iters

    assert lr_schedule_iters(TrainConfig(train_iters=1000)) == (1000, 10.0)
    assert lr_schedule_iters(TrainConfig(train_iters=1000, lr_decay_iters=800, warmup=0.05)) == (800, 40.0)
    assert lr_schedule_iters(TrainConfig(train_iters=1000, lr_decay_fraction=0.333, warmup=0.1)) == (
        333,
        pytest.approx(33.3),
    )
    assert lr_schedule_iters(TrainConfig(train_iters=0)) == (1, 0.01)


def test_scheduler_steps_groups_with_lr_scale() -> None:
    torch = pytest.importorskip("torch")
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], lr=1.0)
    sched = AnnealingLR(opt, max_lr=MAX, min_lr=MIN, warmup_iters=10.0, decay_iters=100, style="linear")
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]  # the first update is taken at lr 0
    for _ in range(55):
        sched.step()
    assert sched.get_lr() == pytest.approx(3e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3e-4, 1.5e-4])
    state = sched.state_dict()
    again = AnnealingLR(opt, max_lr=MAX, min_lr=MIN, warmup_iters=10.0, decay_iters=100, style="linear")
    again.load_state_dict(state)
    assert again.num_iters == 55 and again.get_lr() == pytest.approx(3e-4)


def _tiny_cfg(**train: object) -> NeoXConfig:
    model = ModelConfig(num_layers=1, hidden_size=16, num_attention_heads=2, seq_length=8)
    return NeoXConfig(model=model, train=TrainConfig(**train))


def test_optimizer_settings_pass_through() -> None:
    pytest.importorskip("torch")
    from neoxcli.model import GPTModel
    from neoxcli.training.optim import build_optimizer

    opt_cfg = OptimizerConfig(type="Adam", params={"lr": 1e-3, "betas": [0.8, 0.9], "eps": 1e-6})
    cfg = _tiny_cfg(optimizer=opt_cfg, weight_decay=0.1)
    model = GPTModel(cfg.model, 64)
    opt = build_optimizer(cfg, model, "cpu")
    assert {(g["betas"], g["eps"]) for g in opt.param_groups} == {((0.8, 0.9), 1e-6)}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    # GPT-NeoX: norm weights and biases get no weight decay, every other tensor the top-level weight_decay
    for name, p in model.named_parameters():
        no_decay = name.endswith(".bias") or "norm" in name
        assert decay[id(p)] == (0.0 if no_decay else 0.1), name


def test_adam_betas_default_to_adams_own() -> None:
    pytest.importorskip("torch")
    from neoxcli.model import GPTModel
    from neoxcli.training.optim import build_optimizer

    # A GPT-NeoX config that gives only lr: its Adam runs with betas (0.9, 0.999).
    cfg = _tiny_cfg(optimizer=OptimizerConfig(type="Adam", params={"lr": 1e-3}))
    opt = build_optimizer(cfg, GPTModel(cfg.model, 64), "cpu")
    assert {(g["betas"], g["eps"]) for g in opt.param_groups} == {((0.9, 0.999), 1e-8)}


def test_each_evaluation_reads_the_next_validation_window() -> None:
    from neoxcli.training.batches import valid_start
    from neoxcli.training.data import sample_counts

    # eval_interval 10, eval_iters 2, global batch 8: GPT-NeoX's one validation iterator
    # reads samples 0-15 after step 10, 16-31 after step 20, and 32-47 at a final step 25.
    starts = [valid_start(n, 10, 2, 8) for n in (10, 20, 25, 30)]
    assert starts == [0, 16, 32, 32]
    # and the validation split GPT-NeoX asks for holds the last window
    cfg = _tiny_cfg(train_iters=25, eval_interval=10, eval_iters=2)
    assert sample_counts(cfg, 8)[1] == 48 == starts[2] + 2 * 8


def test_label_files_give_the_targets_and_negatives_are_masked(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("torch")
    from neoxcli.data.gpt_dataset import BlendableDataset, GPTDataset
    from neoxcli.data.indexed import IndexedDataset, IndexedDatasetWriter
    from neoxcli.training.batches import BatchSampler as _Sampler

    with IndexedDatasetWriter(tmp_path / "text", np.uint16) as w:
        for d in range(4):
            w.add_document(np.arange(10) + 100 * d)
    with IndexedDatasetWriter(tmp_path / "lab", np.int32) as w:
        for d in range(4):
            # prompt tokens masked (-100, or any negative), answer tokens kept
            w.add_document(np.where(np.arange(10) < 5, -1 if d % 2 else -100, np.arange(10) + 100 * d))
    text, lab = IndexedDataset(tmp_path / "text"), IndexedDataset(tmp_path / "lab")
    ds = GPTDataset(text, (0, 4), 4, 9, seed=1, label_indexed=lab)
    for source in (ds, BlendableDataset([ds], [1.0])):
        x, y = _Sampler(source, micro=2, dp_size=1, dp_rank=0).batch(0, 0)
        for row in range(2):
            tokens, labels = source[row], source.labels(row)
            assert x[row].tolist() == tokens[:-1].tolist()
            want = [int(t) if t >= 0 else -100 for t in labels[1:]]
            assert y[row].tolist() == want and -100 in want and want != tokens[1:].tolist()
    # without a label file the targets are the next tokens
    plain = GPTDataset(text, (0, 4), 4, 9, seed=1)
    x, y = _Sampler(plain, micro=1, dp_size=1, dp_rank=0).batch(0, 0)
    assert y[0].tolist() == plain[0][1:].tolist()


def test_console_log_line_is_the_mean_loss_since_the_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    """As GPT-NeoX logs: the loss printed every log_interval steps averages those steps."""
    from neoxcli.training.report import ConsoleReporter

    report = ConsoleReporter(log_interval=2, live=False)
    for it, loss in enumerate([4.0, 2.0, 3.0, 1.0, 7.0], start=1):
        row = {"iteration": it, "loss": loss, "lr": 1e-3, "tokens_per_s": 10.0}
        if it == 5:
            row["valid_loss"] = 6.5
        report.on_step(row)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert [line.split()[3] for line in lines] == ["3.0000", "2.0000", "7.0000"]
    assert lines[-1].endswith("valid_loss 6.5000")


def test_prefetcher_gives_the_sampler_batches_in_order() -> None:
    """num_workers only moves the reading off the step: the batches are the sampler's, exactly."""
    import numpy as np
    import torch

    from neoxcli.training.batches import BatchSampler, Prefetcher

    data = [np.arange(i, i + 9) for i in range(50)]
    plain = BatchSampler(data, micro=2, dp_size=2, dp_rank=1)
    ahead = Prefetcher(BatchSampler(data, micro=2, dp_size=2, dp_rank=1), 3, 12, workers=2)
    try:
        steps = [(c, m) for c in range(0, 120, 12) for m in range(3)] + [(240, 0), (0, 0)]  # then a jump back
        for consumed, m in steps:
            want, got = plain.batch(consumed, m), ahead.batch(consumed, m)
            assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    finally:
        ahead.close()
