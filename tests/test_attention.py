"""Flex attention against the dense-mask reference: ALiBi, local bands, documents, padding, caches.

The CPU checks run flex attention uncompiled (the same score and mask
functions, evaluated through a dense score matrix), which takes well under a
second; compiling a flex kernel on CPU takes 7-20 s, so the compiled path is
checked on CPU only on request (``NEOX_TEST_COMPILE=1``) and by
``bench/attention.py``, which compares its outputs. Flex attention has
no backward on CPU, so gradients are compared on a GPU (``-m gpu``), where
every check also runs compiled.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import tiny_model_config

from neoxcli.kernels import attn as attn_mod
from neoxcli.kernels.attn import causal_attention, dense_causal_mask, flex_causal_attention, use_flex
from neoxcli.model import GPTModel, alibi_slopes

pytestmark = pytest.mark.skipif(not attn_mod.flex_available(), reason="this torch has no flex_attention")

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

# fp32: flex and SDPA sum in different orders, a few ulps of O(1) outputs. bf16: one bf16 ulp at 1.0 is 2^-7.
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}

CASES = {
    "alibi": dict(alibi=True),
    "band": dict(window=5),
    "alibi-band": dict(alibi=True, window=3),
    "documents": dict(documents=True),
    "padding": dict(padding=True),
    "alibi-padding-band": dict(alibi=True, padding=True, window=6),
    "documents-band-alibi": dict(alibi=True, documents=True, window=4),
}


def _inputs(
    case: dict,
    b: int = 2,
    h: int = 4,
    h_kv: int = 4,
    t_q: int = 24,
    t_k: int = 24,
    d: int = 16,
    dtype=torch.float32,
) -> tuple[tuple[torch.Tensor, ...], dict]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, t_q, d, generator=g).to(dtype)
    k = torch.randn(b, h_kv, t_k, d, generator=g).to(dtype)
    v = torch.randn(b, h_kv, t_k, d, generator=g).to(dtype)
    kw: dict = {}
    if case.get("alibi"):
        kw["alibi"] = alibi_slopes(h)
    if case.get("window"):
        kw["window"] = case["window"]
    if case.get("documents"):
        # Packed documents of uneven lengths, different per row.
        ids = torch.zeros(b, t_k, dtype=torch.long)
        ids[0, 7:] = 1
        ids[0, 15:] = 2
        ids[1, 3:] = 1
        kw["document_ids"] = ids
    if case.get("padding"):
        km = torch.ones(b, t_k, dtype=torch.bool)
        km[1, :9] = False  # left padding in the second row
        kw["key_mask"] = km
    return (q, k, v), kw


def _dense(q, k, v, **kw):
    return causal_attention(q, k, v, backend="torch", **kw)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_matches_dense(name: str, dtype: torch.dtype) -> None:
    (q, k, v), kw = _inputs(CASES[name], dtype=dtype)
    out = flex_causal_attention(q, k, v, compiled=False, **kw)
    ref = _dense(q, k, v, **kw)
    assert (out.float() - ref.float()).abs().max().item() < TOL[dtype]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_flex_matches_dense_forward_and_grad_on_gpu(name: str, dtype: torch.dtype) -> None:
    (q, k, v), kw = _inputs(CASES[name], h=4, h_kv=2, t_q=300, t_k=300, dtype=dtype)
    kw = {key: val.cuda() if torch.is_tensor(val) else val for key, val in kw.items()}
    leaves = [t.cuda().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.cuda().requires_grad_() for t in (q, k, v)]
    out = flex_causal_attention(*leaves, compiled=True, **kw)
    ref = _dense(*ref_leaves, **kw)
    tol = TOL[dtype]
    assert (out.float() - ref.float()).abs().max().item() < tol
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype).cuda()
    out.backward(grad)
    ref.backward(grad)
    for a, b in zip(leaves, ref_leaves, strict=True):
        assert (a.grad.float() - b.grad.float()).abs().max().item() < 8 * tol


@pytest.mark.parametrize("name", ["alibi-band", "documents", "alibi-padding-band"])
def test_flex_matches_dense_for_a_chunk_after_a_cache(name: str) -> None:
    """Queries that are the last 10 of 30 positions (a prefill after a prefix), with grouped-query heads."""
    (q, k, v), kw = _inputs(CASES[name], h=4, h_kv=2, t_q=10, t_k=30)
    ref = _dense(q, k, v, **kw)
    out = flex_causal_attention(q, k, v, compiled=False, **kw)
    assert (out - ref).abs().max().item() < TOL[torch.float32]


def test_flex_scale_is_used() -> None:
    (q, k, v), kw = _inputs(CASES["alibi"])
    ref = _dense(q, k, v, scale=0.05, **kw)
    out = flex_causal_attention(q, k, v, compiled=False, scale=0.05, **kw)
    assert (out - ref).abs().max().item() < TOL[torch.float32]
    assert (out - flex_causal_attention(q, k, v, compiled=False, **kw)).abs().max().item() > 1e-3


def test_per_batch_block_mask_is_built_once_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every layer of a forward passes the same document ids: one block mask for all of them, and a
    new batch (even with equal values) or an in-place change builds a new one, with the right result."""
    built: list[int] = []
    real = attn_mod._create_block_mask

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attn_mod, "_create_block_mask", counting)
    (q, k, v), kw = _inputs(CASES["documents"])
    first = [flex_causal_attention(q, k, v, compiled=False, **kw) for _ in range(3)]  # three "layers"
    assert len(built) == 1 and all(torch.equal(first[0], o) for o in first)
    flex_causal_attention(q, k, v, compiled=False, document_ids=kw["document_ids"].clone())
    assert len(built) == 2
    ids = kw["document_ids"].clone()
    flex_causal_attention(q, k, v, compiled=False, document_ids=ids)
    ids[0, 3:] = 5  # the same tensor, changed in place
    out = flex_causal_attention(q, k, v, compiled=False, document_ids=ids)
    assert len(built) == 4
    assert (out - _dense(q, k, v, document_ids=ids)).abs().max().item() < TOL[torch.float32]


def test_dense_document_mask_stays_within_documents() -> None:
    ids = torch.tensor([[0, 0, 1, 1, 1]])
    mask, causal = dense_causal_mask(5, 5, torch.device("cpu"), torch.float32, document_ids=ids)
    assert not causal
    expected = torch.tensor([[i >= j and ids[0, i] == ids[0, j] for j in range(5)] for i in range(5)])
    assert torch.equal(mask[0, 0], expected)


def test_which_path_runs() -> None:
    """Dense under `torch`, for decode, under dropout and without a mask; flex on GPUs and long CPU inputs."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    base = dict(special=True, dropout_p=0.0)
    assert not use_flex("torch", cuda, 2048, 2048, **base)
    assert use_flex("auto", cuda, 2048, 2048, **base)
    assert use_flex("liger", cuda, 2048, 2048, **base)
    assert not use_flex("auto", cuda, 128, 128, **base)  # a short prompt: the dense bias is small
    assert not use_flex("auto", cuda, 1, 2048, **base)  # a decode step
    assert not use_flex("auto", cuda, 2048, 2048, special=False, dropout_p=0.0)  # SDPA's causal kernel
    assert not use_flex("auto", cuda, 2048, 2048, special=True, dropout_p=0.1)
    assert not use_flex("auto", cpu, 2048, 2048, **base)
    assert use_flex("auto", cpu, 8192, 8192, **base)  # long-context evaluation
    assert not use_flex("auto", cpu, 8192, 8192, needs_grad=True, **base)  # no CPU backward
    assert use_flex("auto", cuda, 8192, 8192, needs_grad=True, **base)


@pytest.mark.parametrize(
    "over",
    [
        dict(pos_emb="alibi", num_attention_heads=8, hidden_size=48),
        dict(attention_config=[[["local", "global"], 1]], sliding_window_width=4, num_kv_heads=2),
    ],
    ids=["alibi", "local-gqa"],
)
def test_model_through_flex_matches_dense(over: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole model, batched with left padding, then a cached decode (forward: flex has no CPU backward)."""
    torch.manual_seed(0)
    dense = GPTModel(tiny_model_config(kernels="torch", **over), 96).eval()
    flex = GPTModel(tiny_model_config(**over), 96).eval()
    flex.load_state_dict(dense.state_dict())
    # `auto` on CPU takes flex from this many keys on (normally 4096), through the uncompiled
    # flex kernel: the same functions, checked in a second instead of a compile.
    monkeypatch.setattr(attn_mod, "CPU_FLEX_MIN_KEYS", 8)
    calls = []

    def eager_counted():
        eager = attn_mod._eager_flex()
        return lambda *a, **kw: calls.append(a[0].shape[2]) or eager(*a, **kw)

    monkeypatch.setattr(attn_mod, "_compiled_flex", eager_counted)
    ids = torch.randint(0, 96, (2, 20))
    key_mask = torch.ones(2, 20, dtype=torch.bool)
    key_mask[0, :5] = False
    pos = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = dense(ids, position_ids=pos, key_mask=key_mask)
        b = flex(ids, position_ids=pos, key_mask=key_mask)
    assert (a - b).abs().max().item() < 1e-4
    # Prefill through flex, then one-token steps through the dense path, against the full forward.
    with torch.no_grad():
        cache = flex.make_kv_cache(batch_size=2, max_len=24)
        steps = [flex(ids[:, :14], position_ids=pos[:, :14], kv_cache=cache, key_mask=key_mask[:, :14])]
        for t in range(14, 20):
            steps.append(
                flex(
                    ids[:, t : t + 1],
                    position_ids=pos[:, t : t + 1],
                    kv_cache=cache,
                    start_pos=t,
                    key_mask=key_mask[:, : t + 1],
                )
            )
        assert (torch.cat(steps, 1) - a).abs().max().item() < 1e-4
    # Every layer ran flex for the full forward and the 14-token prefill; decode steps stayed dense.
    layers = len(flex.blocks)
    assert calls == [20] * layers + [14] * layers


def _compiled_check(device: str, dtype: torch.dtype, t: int) -> None:
    (q, k, v), kw = _inputs(CASES["alibi-padding-band"], b=2, h=4, h_kv=2, t_q=t, t_k=t, dtype=dtype)
    grad = device != "cpu"  # flex attention has no CPU backward
    q, k, v = (x.to(device).requires_grad_(grad) for x in (q, k, v))
    kw = {key: val.to(device) if torch.is_tensor(val) else val for key, val in kw.items()}
    out = flex_causal_attention(q, k, v, compiled=True, **kw)
    ref_in = [x.detach().clone().requires_grad_(grad) for x in (q, k, v)]
    ref = _dense(*ref_in, **kw)
    assert (out.float() - ref.float()).abs().max().item() < TOL[dtype]
    if grad:
        out.sum().backward()
        ref.sum().backward()
        for a, b in zip((q, k, v), ref_in, strict=True):
            assert (a.grad.float() - b.grad.float()).abs().max().item() < 8 * TOL[dtype]


@pytest.mark.skipif(
    os.environ.get("NEOX_TEST_COMPILE") != "1",
    reason="compiling flex attention on CPU takes ~20 s; set NEOX_TEST_COMPILE=1 to run it",
)
def test_compiled_flex_matches_dense() -> None:
    """The compiled CPU kernel (one small shape: compiling dominates the time)."""
    _compiled_check("cpu", torch.float32, 128)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [256, 2048])
def test_compiled_flex_matches_dense_on_gpu(dtype: torch.dtype, t: int) -> None:
    _compiled_check("cuda", dtype, t)
