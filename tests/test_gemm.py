"""``neoxcli.kernels.gemm``: the oneDNN training GEMMs against ``F.linear``, when they are used, and
compiled blocks that ignore DeepSpeed's process-wide swap of ``F.linear``.

Tolerances: fp32, max absolute difference relative to max(1, the reference's largest magnitude),
1e-5 for outputs and gradients (another GEMM library's summation order).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neoxcli.kernels import gemm as lin

needs_onednn = pytest.mark.skipif(not lin.onednn_gemm_available(), reason="this torch has no oneDNN linear")
TOL = 1e-5


@pytest.fixture
def choice(monkeypatch: pytest.MonkeyPatch):
    """Set ``NEOX_CPU_GEMM`` and forget the process's cached decision (restored afterwards).

    ``F.linear`` is PyTorch's own here: a ZeRO-3 run earlier in the process leaves DeepSpeed's in
    its place, and then ``linear`` defers to that.
    """
    saved = dict(lin._CHOICE)
    monkeypatch.setattr(torch.nn.functional, "linear", lin._ATEN_LINEAR)

    def set_to(value: str | None) -> None:
        lin._CHOICE.clear()
        if value is None:
            monkeypatch.delenv("NEOX_CPU_GEMM", raising=False)
        else:
            monkeypatch.setenv("NEOX_CPU_GEMM", value)

    yield set_to
    lin._CHOICE.clear()
    lin._CHOICE.update(saved)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    diff = (a - b).abs().max().item()
    assert diff <= TOL * max(1.0, b.abs().max().item()), diff


@needs_onednn
@pytest.mark.parametrize("shape", [(37, 64), (3, 50, 64)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_onednn_linear_matches_f_linear(choice, shape: tuple[int, ...], bias: bool, x_grad: bool) -> None:
    """Values and all three gradients; an input without gradient (the first layer's) as well."""
    choice("onednn")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(96, 64, generator=gen) * 0.1
    b = torch.randn(96, generator=gen) if bias else None
    g = torch.randn(*shape[:-1], 96, generator=gen)

    def run(fn):
        xs = x.clone().requires_grad_(x_grad)
        ws = w.clone().requires_grad_()
        bs = b.clone().requires_grad_() if b is not None else None
        assert lin.uses_onednn(xs, ws)
        y = fn(xs, ws, bs)
        y.backward(g)
        return y, [t.grad for t in (xs, ws, bs) if t is not None and t.requires_grad]

    got, got_grads = run(lambda *a: lin.linear(*a))
    want, want_grads = run(F.linear)
    assert got.grad_fn is not None and "OneDNN" in type(got.grad_fn).__name__
    assert got.shape == want.shape
    _close(got, want)
    assert len(got_grads) == len(want_grads)
    for a, b_ in zip(got_grads, want_grads, strict=True):
        _close(a, b_)


@needs_onednn
def test_onednn_linear_takes_a_transposed_input(choice) -> None:
    choice("onednn")
    x = torch.randn(64, 40).t().requires_grad_()  # [40, 64], not contiguous
    w = torch.randn(24, 64, requires_grad=True)
    y = lin.linear(x, w)
    y.sum().backward()
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    F.linear(x, w).sum().backward()
    _close(y, F.linear(x, w).detach())
    _close(gx, x.grad)
    _close(gw, w.grad)


@needs_onednn
def test_onednn_is_for_training_gemms_only(choice) -> None:
    """Inference, autocast, bf16, ``kernels: torch`` and a swapped ``F.linear`` keep PyTorch's op."""
    choice("onednn")
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(6, 8, requires_grad=True)
    assert lin.uses_onednn(x, w)
    assert not lin.uses_onednn(x, w, "torch")
    assert not lin.uses_onednn(x.detach(), w.detach())  # nothing to differentiate
    with torch.no_grad():
        assert not lin.uses_onednn(x, w)
        y = lin.linear(x, w)
        assert torch.equal(y, F.linear(x, w))  # evaluation: bit for bit the reference
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lin.uses_onednn(x, w)
    assert not lin.uses_onednn(x.bfloat16(), w.bfloat16())
    choice("blas")
    assert not lin.uses_onednn(x, w)


def test_cpu_gemm_setting(choice) -> None:
    choice("blas")
    assert lin.cpu_prefers_onednn() is False
    choice("onednn")
    assert lin.cpu_prefers_onednn() is lin.onednn_gemm_available()
    choice(None)
    vendor = lin._cpu_vendor()
    expected = torch.backends.mkl.is_available() and vendor not in ("", "GenuineIntel")
    assert lin.cpu_prefers_onednn() is (expected and lin.onednn_gemm_available())
    choice("fast")
    with pytest.raises(ValueError, match="NEOX_CPU_GEMM='fast'"):
        lin.cpu_prefers_onednn()


@needs_onednn
def test_training_matmul_is_the_product(choice) -> None:
    a, b = torch.randn(33, 20), torch.randn(20, 17)
    for setting in ("onednn", "blas"):
        choice(setting)
        _close(lin.training_matmul(a, b), a @ b)


def _tiny_model():
    from neoxcli.config.schema import ModelConfig
    from neoxcli.model import GPTModel

    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16)
    torch.manual_seed(0)
    return GPTModel(cfg, 64).eval()  # logits from the head (training mode defers it to the loss)


def _grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    logits = model(ids[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_onednn
def test_model_gradients_with_onednn_match_blas(choice) -> None:
    """Whole-model gradients (every linear layer and the head) within fp32 rounding of MKL's."""
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    model = _tiny_model()
    choice("blas")
    want = _grads(model, ids)
    choice("onednn")
    got = _grads(model, ids)
    assert got.keys() == want.keys()
    for name in want:
        _close(got[name], want[name])


def test_compiled_blocks_ignore_deepspeeds_swapped_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeRO-3 replaces ``F.linear`` for the whole process with DeepSpeed's autograd function, which a
    compiled block differentiated to zero weight gradients on torch 2.11. Compiled blocks call the ATen
    op, so their gradients are the eager ones; eager blocks still call the swapped function."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.linear import zero3_linear_wrap

    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    want = _grads(_tiny_model(), ids)
    monkeypatch.setattr(torch.nn.functional, "linear", zero3_linear_wrap)
    eager = _tiny_model()
    x = torch.randn(3, 32, requires_grad=True)
    assert "ZeroStage3" in type(eager.blocks[0].mlp.dense_h_to_4h(x).grad_fn).__name__
    torch._dynamo.reset()
    compiled = _tiny_model()
    for block in compiled.blocks:
        block.compile()
    got = _grads(compiled, ids)
    torch._dynamo.reset()
    for name in want:
        _close(got[name], want[name])
