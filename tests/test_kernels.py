"""Each fused kernel against its PyTorch reference: forward and gradients, fp32 and bf16.

Without a GPU the Triton kernels run in Triton's CPU interpreter
(``TRITON_INTERPRET=1``, set here before Triton is imported); liger-kernel's
RMSNorm and LayerNorm do not run in the interpreter (they call ``.to`` on
scalar arguments) and are checked on a GPU only (``-m gpu``). The same file
runs on a GPU as it is, where every kernel runs compiled.

Tolerances, as max absolute difference relative to max(1, the reference's
largest magnitude): fp32 2e-5 for outputs and 1e-4 for gradients (different
summation orders); bf16 2^-6 (two bf16 ulps: Triton's interpreter converts to
bf16 by truncating, where PyTorch and the GPU round to nearest) and 5e-2 for
gradients.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from neoxcli import kernels  # noqa: E402
from neoxcli.kernels.backend import has_module, resolve  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(not has_module("triton"), reason="triton is not installed")
needs_liger = pytest.mark.skipif(not has_module("liger_kernel"), reason="liger-kernel is not installed")
gpu_only = pytest.mark.skipif(not CUDA, reason="liger's norm kernels do not run in Triton's interpreter")
DTYPES = [torch.float32, torch.bfloat16]
OUT_TOL = {torch.float32: 2e-5, torch.bfloat16: 2.0**-6}
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= tol, f"max difference {diff} > {tol}"


def _compare(fn, ref, inputs: list[torch.Tensor], dtype: torch.dtype) -> None:
    """Outputs and the gradients of every input agree, for the same upstream gradient."""
    a = [t.detach().clone().requires_grad_() for t in inputs]
    b = [t.detach().clone().requires_grad_() for t in inputs]
    out, want = fn(*a), ref(*b)
    assert out.dtype == want.dtype and out.shape == want.shape
    _close(out, want, OUT_TOL[dtype] * max(1.0, want.abs().max().item()))
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE, want.dtype)
    out.backward(g)
    want.backward(g)
    for x, y in zip(a, b, strict=True):
        _close(x.grad, y.grad, GRAD_TOL[dtype] * max(1.0, y.grad.abs().max().item()))


def _randn(*shape: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def test_backend_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve("torch", cpu) == "torch"
    assert resolve("auto", cpu) == "torch"  # CPU models stay exact PyTorch, interpreter or not
    if has_module("triton"):
        cuda = torch.device("cuda")
        assert resolve("auto", cuda) == ("liger" if has_module("liger_kernel") else "triton")
        assert resolve("triton", cuda) == "triton"
    with pytest.raises(ValueError, match="kernels backend"):
        resolve("cudnn", cpu)


@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm_triton(dtype: torch.dtype, weighted: bool) -> None:
    x, w = _randn(3, 5, 48, dtype=dtype), 1 + 0.1 * _randn(48, dtype=dtype, seed=1)
    if weighted:
        _compare(
            lambda x, w: kernels.rms_norm(x, w, 1e-6, backend="triton"),
            lambda x, w: kernels.rms_norm(x, w, 1e-6, backend="torch"),
            [x, w],
            dtype,
        )
    else:
        _compare(
            lambda x: kernels.rms_norm(x, None, 1e-6, backend="triton"),
            lambda x: kernels.rms_norm(x, None, 1e-6, backend="torch"),
            [x],
            dtype,
        )


@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("biased", [True, False])
def test_layer_norm_triton(dtype: torch.dtype, biased: bool) -> None:
    x = 3 + 2 * _randn(4, 7, 40, dtype=dtype)  # off-centre, so the mean matters
    w, b = 1 + 0.1 * _randn(40, dtype=dtype, seed=1), 0.1 * _randn(40, dtype=dtype, seed=2)
    if biased:
        _compare(
            lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5, backend="triton"),
            lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5, backend="torch"),
            [x, w, b],
            dtype,
        )
    else:
        _compare(
            lambda x, w: kernels.layer_norm(x, w, None, 1e-5, backend="triton"),
            lambda x, w: kernels.layer_norm(x, w, None, 1e-5, backend="torch"),
            [x, w],
            dtype,
        )


@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh"])
def test_gated_activation_triton(dtype: torch.dtype, act: str) -> None:
    h = 2 * _randn(3, 6, 2 * 72, dtype=dtype)
    _compare(
        lambda h: kernels.gated_activation(h, act, backend="triton"),
        lambda h: kernels.gated_activation(h, act, backend="torch"),
        [h],
        dtype,
    )


@needs_liger
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pct", [0.25, 1.0], ids=["neox-quarter", "llama-full"])
def test_rotary_liger(dtype: torch.dtype, pct: float) -> None:
    from neoxcli.model.positions import RotaryEmbedding

    d = 32
    dim = int(d * pct)
    rope = RotaryEmbedding(dim).to(DEVICE)
    cos, sin = rope.cos_sin(torch.arange(3, 13, device=DEVICE)[None])  # positions after a prefix
    q, k = _randn(2, 4, 10, d, dtype=dtype), _randn(2, 2, 10, d, dtype=dtype, seed=1)

    def cat(backend: str):
        return lambda q, k: torch.cat(
            [t.flatten() for t in kernels.rotary(q, k, cos, sin, dim, backend=backend)]
        )

    _compare(cat("liger"), cat("torch"), [q, k], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pct", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("per_row", [False, True], ids=["shared-positions", "per-row-positions"])
def test_rotary_torch_function_is_bit_identical(dtype: torch.dtype, pct: float, per_row: bool) -> None:
    """The one-pass autograd rotary equals autograd through ``rotary_torch`` bit for bit, values and gradients."""
    from neoxcli.model.positions import RotaryEmbedding

    d = 32
    dim = int(d * pct)
    rope = RotaryEmbedding(dim).to(DEVICE)
    gen = torch.Generator().manual_seed(5)
    pos = torch.randint(0, 60, (2, 10), generator=gen) if per_row else torch.arange(3, 13)[None]
    cos, sin = rope.cos_sin(pos.to(DEVICE))
    # q as the model hands it over: a transposed view, not contiguous
    q = _randn(2, 10, 4, d, dtype=dtype).transpose(1, 2)
    k = _randn(2, 2, 10, d, dtype=dtype, seed=1)
    gq, gk = _randn(2, 4, 10, d, dtype=dtype, seed=2), _randn(2, 2, 10, d, dtype=dtype, seed=3)

    def run(fn):
        qq, kk = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
        a, b = fn(qq, kk)
        ((a * gq).sum() + (b * gk).sum()).backward()
        return a, b, qq.grad, kk.grad

    fast = run(lambda q, k: kernels.rotary(q, k, cos, sin, dim, backend="torch"))
    ref = run(lambda q, k: (kernels.rotary_torch(q, cos, sin, dim), kernels.rotary_torch(k, cos, sin, dim)))
    for got, want in zip(fast, ref, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_linear_cross_entropy(dtype: torch.dtype, bias: bool) -> None:
    """The PyTorch path itself: several chunks, ignored labels, against linear + cross_entropy."""
    x, w = _randn(2, 19, 24, dtype=dtype), 0.3 * _randn(101, 24, dtype=dtype, seed=1)
    b = 0.1 * _randn(101, dtype=dtype, seed=2)
    labels = torch.randint(0, 101, (2, 19), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    labels[0, :4] = -100

    def fused(x, w, *b):
        return kernels.linear_cross_entropy(x, w, b[0] if b else None, labels, backend="torch", chunk_rows=8)

    def ref(x, w, *b):
        logits = F.linear(x, w, b[0] if b else None).float()
        return F.cross_entropy(logits.view(-1, 101), labels.view(-1))

    _compare(fused, ref, [x, w, b] if bias else [x, w], dtype)


@needs_liger
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_liger_linear_cross_entropy(dtype: torch.dtype) -> None:
    x, w = _randn(40, 32, dtype=dtype), 0.3 * _randn(130, 32, dtype=dtype, seed=1)
    labels = torch.randint(0, 130, (40,), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    labels[:5] = -100
    _compare(
        lambda x, w: kernels.linear_cross_entropy(x, w, None, labels, backend="liger"),
        lambda x, w: F.cross_entropy(F.linear(x, w).float(), labels),
        [x, w],
        dtype,
    )


@needs_liger
@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_liger_norms(dtype: torch.dtype) -> None:
    x = 3 + _randn(4, 7, 64, dtype=dtype)
    w, b = 1 + 0.1 * _randn(64, dtype=dtype, seed=1), 0.1 * _randn(64, dtype=dtype, seed=2)
    _compare(
        lambda x, w: kernels.rms_norm(x, w, 1e-6, backend="liger"),
        lambda x, w: kernels.rms_norm(x, w, 1e-6, backend="torch"),
        [x, w],
        dtype,
    )
    _compare(
        lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5, backend="liger"),
        lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5, backend="torch"),
        [x, w, b],
        dtype,
    )


@needs_triton
@needs_liger
@pytest.mark.gpu
@pytest.mark.parametrize(
    "over",
    [
        dict(norm="rmsnorm", activation="swiglu", use_bias_in_norms=False, rotary_pct=1.0, num_kv_heads=2),
        dict(gpt_j_residual=True, rotary_pct=0.25, activation="geglu"),
    ],
    ids=["llama-like", "neox-like"],
)
def test_model_with_kernels_matches_torch(over: dict) -> None:
    """The whole model on ``kernels: triton`` against ``kernels: torch``: logits and every gradient (fp32)."""
    from conftest import tiny_model_config

    from neoxcli.model import GPTModel

    torch.manual_seed(0)
    ref = GPTModel(tiny_model_config(kernels="torch", num_layers=1, **over), 96).to(DEVICE)
    fused = GPTModel(tiny_model_config(kernels="triton", num_layers=1, **over), 96).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    a, b = ref(ids), fused(ids)
    _close(a, b, 1e-4)
    a.logsumexp(-1).mean().backward()
    b.logsumexp(-1).mean().backward()
    for (name, p), q in zip(ref.named_parameters(), fused.parameters(), strict=True):
        diff = (p.grad - q.grad).abs().max().item()
        assert diff < 1e-4, (name, diff)


def test_reference_loss_is_cross_entropys_and_zero_for_an_all_ignored_micro_batch() -> None:
    """``kernels: torch``'s loss (logits, then cross-entropy) is ``F.cross_entropy`` to the bit, gradients
    included, and an all-ignored micro-batch scores 0 with zero gradients, as the chunked loss does."""
    from neoxcli.kernels import linear_cross_entropy
    from neoxcli.parallel.plan import make_loss_fn

    loss_fn = make_loss_fn()
    logits = (3 * _randn(2, 9, 37, dtype=torch.float32)).requires_grad_()
    labels = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    labels[1, 2:] = -100
    got = loss_fn(logits, labels)
    (g_got,) = torch.autograd.grad(got, logits)
    want = F.cross_entropy(logits.view(-1, 37), labels.view(-1))
    (g_want,) = torch.autograd.grad(want, logits)
    assert torch.equal(got, want) and torch.equal(g_got, g_want)

    ignored = torch.full_like(labels, -100)
    assert torch.isnan(F.cross_entropy(logits.view(-1, 37), ignored.view(-1)))  # what it replaces
    zero = loss_fn(logits, ignored)
    (g_zero,) = torch.autograd.grad(zero, logits)
    assert zero.item() == 0.0 and not g_zero.any()
    x, w = (_randn(n, 8, dtype=torch.float32, seed=n).requires_grad_() for n in (18, 37))
    chunked = linear_cross_entropy(x, w, None, ignored.view(-1))
    assert chunked.item() == 0.0 and not any(g.any() for g in torch.autograd.grad(chunked, (x, w)))


@pytest.mark.parametrize(
    "backend",
    [pytest.param("triton", marks=[needs_triton, pytest.mark.gpu]), "auto"],
)
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_training_head_defers_to_the_fused_loss(tied: bool, backend: str) -> None:
    """A training forward on fused kernels, or on ``auto`` anywhere (the chunked PyTorch loss on CPU),
    hands the loss the head's inputs: same loss, same gradients."""
    from conftest import tiny_model_config

    from neoxcli.model import GPTModel, HeadInputs
    from neoxcli.parallel.plan import make_loss_fn

    over = dict(num_layers=1, no_weight_tying=not tied, use_bias_in_output_layer=not tied)
    torch.manual_seed(0)
    ref = GPTModel(tiny_model_config(kernels="torch", **over), 96).to(DEVICE).train()
    fused = GPTModel(tiny_model_config(kernels=backend, **over), 96).to(DEVICE).train()
    fused.load_state_dict(ref.state_dict())
    ref.head.defer_logits = fused.head.defer_logits = True
    ids = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    labels = ids.roll(-1, dims=1)
    loss_fn = make_loss_fn()
    out = fused(ids)
    assert isinstance(out, HeadInputs)
    logits = ref(ids)
    assert isinstance(logits, torch.Tensor)  # the torch backend never defers
    a, b = loss_fn(logits, labels), loss_fn(out, labels)
    _close(a, b, 1e-5)
    a.backward()
    b.backward()
    for (name, p), q in zip(ref.named_parameters(), fused.parameters(), strict=True):
        diff = (p.grad - q.grad).abs().max().item()
        assert diff < 1e-4, (name, diff)
    with torch.no_grad():  # evaluation gets logits
        assert isinstance(fused(ids), torch.Tensor)


def _vocab_parallel_worker(out: str) -> None:
    """Rank r of 2: the chunked vocab-parallel loss on its vocabulary block against the full reference."""
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(21, 16, generator=g), 0.5 * torch.randn(64, 16, generator=g)
    b = 0.1 * torch.randn(64, generator=g)
    labels = torch.randint(0, 64, (21,), generator=g)
    labels[:3] = -100
    ref_in = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = F.cross_entropy(F.linear(*ref_in).float(), labels)
    ref.backward()
    xs = x.clone().requires_grad_()
    ws, bs = (t.chunk(2)[rank].clone().requires_grad_() for t in (w, b))
    loss = kernels.linear_cross_entropy(xs, ws, bs, labels, group=dist.group.WORLD, chunk_rows=5)
    loss.backward()
    dist.all_reduce(xs.grad)  # what copy_to_tp's backward does
    diffs = {
        "loss": abs(loss.item() - ref.item()),
        "x": (xs.grad - ref_in[0].grad).abs().max().item(),
        "w": (ws.grad - ref_in[1].grad.chunk(2)[rank]).abs().max().item(),
        "b": (bs.grad - ref_in[2].grad.chunk(2)[rank]).abs().max().item(),
    }
    gathered = [None, None]
    dist.all_gather_object(gathered, diffs)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


@pytest.mark.slow
def test_vocab_parallel_linear_cross_entropy(tmp_path: Path) -> None:
    """Two gloo processes, each holding half the vocabulary: loss and gradients match one process (fp32)."""
    import json

    from procs import run_ranks

    out = tmp_path / "diffs.json"
    run_ranks([__file__, str(out)], tmp_path, timeout=120)
    for rank_diffs in json.loads(out.read_text()):
        assert max(rank_diffs.values()) < 1e-5, rank_diffs


if __name__ == "__main__":
    import sys

    _vocab_parallel_worker(sys.argv[1])
