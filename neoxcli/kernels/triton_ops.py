"""neox's own Triton kernels: RMSNorm and LayerNorm (forward + backward) and gated activations.

Written for the ops liger-kernel does not compute exactly as neox does (GEGLU
with the exact erf GELU; liger's uses the tanh approximation) and as the
``triton`` backend for the rest. Each kernel does its arithmetic in fp32 and
rounds once where the PyTorch reference rounds, so in fp32 the outputs agree
to a few ulps and in bf16 to one bf16 rounding. They also run in Triton's CPU
interpreter (``TRITON_INTERPRET=1``), which is how the tests check them
without a GPU. Import this module only when Triton is installed.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

# Parallel programs for the weight-gradient reductions: each sums a stripe of rows.
_GRAD_PROGRAMS = 128


def _block(n: int) -> int:
    return triton.next_power_of_2(n)


def _warps(block: int) -> int:
    """Warps for a row of ``block`` elements: enough threads that each holds a few values."""
    return 16 if block >= 8192 else 8 if block >= 2048 else 4


def _row_meta(cols: int) -> dict[str, int]:
    """The launch settings of a one-program-per-row norm kernel: the whole row in one block."""
    block = _block(cols)
    return {"BLOCK": block, "num_warps": _warps(block)}


def _as_rows(x: Tensor) -> Tensor:
    """``x`` as a contiguous ``[rows, last dim]`` matrix, the layout the row kernels index."""
    return x.reshape(-1, x.shape[-1]).contiguous()


def _grad_stripes(x2: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """``dy`` as rows, an empty ``dx``, and how the rows split over the weight-gradient programs.

    Each of the ``progs`` programs sums ``per`` rows into its own fp32 row of the weight gradient;
    the caller adds those partial rows up, so no atomics are needed.
    """
    rows, cols = x2.shape
    progs = min(_GRAD_PROGRAMS, rows)
    return dy.reshape(rows, cols).contiguous(), torch.empty_like(x2), progs, triton.cdiv(rows, progs)


# --------------------------------------------------------------------------- RMSNorm


@triton.jit
def _rms_fwd(X, W, Y, RSTD, n_cols, eps, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    # The reference rounds x * rstd to the input dtype before multiplying by the weight.
    y = (x * rstd).to(Y.dtype.element_ty).to(tl.float32)
    if HAS_W:
        y = y * tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * n_cols + cols, y.to(Y.dtype.element_ty), mask=m)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_bwd(DY, X, W, RSTD, DX, DW, n_rows, n_cols, rows_per_prog, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32) if HAS_W else tl.full((BLOCK,), 1.0, tl.float32)
    for i in range(0, rows_per_prog):
        row = pid * rows_per_prog + i
        if row < n_rows:
            x = tl.load(X + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            n = x * rstd
            dw += dy * n.to(X.dtype.element_ty).to(tl.float32)
            dn = dy * w
            dx = rstd * (dn - n * (tl.sum(dn * n, axis=0) / n_cols))
            tl.store(DX + row * n_cols + cols, dx.to(DX.dtype.element_ty), mask=m)
    tl.store(DW + pid * n_cols + cols, dw, mask=m)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
        shape = x.shape
        x2 = _as_rows(x)
        rows, cols = x2.shape
        out_dtype = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
        y = torch.empty((rows, cols), dtype=out_dtype, device=x.device)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        w = weight if weight is not None else x2  # a placeholder pointer when there is no weight
        _rms_fwd[(rows,)](
            x2,
            w,
            y,
            rstd,
            cols,
            eps,
            HAS_W=weight is not None,
            **_row_meta(cols),
        )
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = shape
        return y.view(*shape[:-1], cols)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x2, weight, rstd = ctx.saved_tensors
        rows, cols = x2.shape
        dy2, dx, progs, per = _grad_stripes(x2, dy)
        dw = torch.empty((progs, cols), dtype=torch.float32, device=x2.device)
        w = weight if weight is not None else x2
        _rms_bwd[(progs,)](
            dy2,
            x2,
            w,
            rstd,
            dx,
            dw,
            rows,
            cols,
            per,
            HAS_W=weight is not None,
            **_row_meta(cols),
        )
        gw = dw.sum(0).to(weight.dtype) if weight is not None else None
        return dx.view(ctx.shape), gw, None


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """``x / sqrt(mean(x^2) + eps)`` rounded to ``x``'s dtype, times ``weight``: ``kernels.rms_norm``'s semantics."""
    return _RMSNorm.apply(x, weight, eps)


# --------------------------------------------------------------------------- LayerNorm


@triton.jit
def _ln_fwd(X, W, B, Y, MEAN, RSTD, n_cols, eps, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    xc = tl.where(m, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / n_cols + eps)
    y = xc * rstd * tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_B:
        y += tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * n_cols + cols, y.to(Y.dtype.element_ty), mask=m)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _ln_bwd(DY, X, W, MEAN, RSTD, DX, DW, DB, n_rows, n_cols, rows_per_prog, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    for i in range(0, rows_per_prog):
        row = pid * rows_per_prog + i
        if row < n_rows:
            x = tl.load(X + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
            xhat = tl.where(m, (x - tl.load(MEAN + row)) * tl.load(RSTD + row), 0.0)
            dw += dy * xhat
            db += dy
            g = dy * w
            c1 = tl.sum(g * xhat, axis=0) / n_cols
            c2 = tl.sum(g, axis=0) / n_cols
            dx = (g - c2 - xhat * c1) * tl.load(RSTD + row)
            tl.store(DX + row * n_cols + cols, dx.to(DX.dtype.element_ty), mask=m)
    tl.store(DW + pid * n_cols + cols, dw, mask=m)
    tl.store(DB + pid * n_cols + cols, db, mask=m)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
        shape = x.shape
        x2 = _as_rows(x)
        rows, cols = x2.shape
        y = torch.empty_like(x2)
        mean = torch.empty(rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        b = bias if bias is not None else weight
        _ln_fwd[(rows,)](
            x2,
            weight,
            b,
            y,
            mean,
            rstd,
            cols,
            eps,
            HAS_B=bias is not None,
            **_row_meta(cols),
        )
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.has_bias = bias is not None
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x2, weight, mean, rstd = ctx.saved_tensors
        rows, cols = x2.shape
        dy2, dx, progs, per = _grad_stripes(x2, dy)
        dw = torch.empty((progs, cols), dtype=torch.float32, device=x2.device)
        db = torch.empty_like(dw)
        _ln_bwd[(progs,)](
            dy2,
            x2,
            weight,
            mean,
            rstd,
            dx,
            dw,
            db,
            rows,
            cols,
            per,
            **_row_meta(cols),
        )
        gb = db.sum(0).to(weight.dtype) if ctx.has_bias else None
        return dx.view(ctx.shape), dw.sum(0).to(weight.dtype), gb, None


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    """``F.layer_norm`` over the last dim (biased variance, fp32 inside, one rounding at the end)."""
    return _LayerNorm.apply(x, weight, bias, eps)


# --------------------------------------------------------------------------- gated activations

_ACT = {"silu": 0, "gelu": 1, "gelu_tanh": 2}


@triton.jit
def _act_and_grad(g, ACT: tl.constexpr):
    """(act(g), act'(g)) in fp32 for silu, erf GELU, tanh GELU."""
    if ACT == 0:
        s = tl.sigmoid(g)
        return g * s, s * (1.0 + g * (1.0 - s))
    elif ACT == 1:
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * g * g)
        return g * cdf, cdf + g * pdf
    else:
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        t = 2.0 * tl.sigmoid(2.0 * inner) - 1.0  # tanh(inner)
        dinner = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * g * g)
        return 0.5 * g * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * dinner


@triton.jit
def _glu_fwd(H, OUT, n_rows, width, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < width
    g = tl.load(H + row * 2 * width + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(H + row * 2 * width + width + cols, mask=m, other=0.0).to(tl.float32)
    a, _ = _act_and_grad(g, ACT)
    # The reference rounds act(gate) to the input dtype, then multiplies.
    a = a.to(OUT.dtype.element_ty).to(tl.float32)
    tl.store(OUT + row * width + cols, (a * u).to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _glu_bwd(DOUT, H, DH, n_rows, width, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < width
    g = tl.load(H + row * 2 * width + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(H + row * 2 * width + width + cols, mask=m, other=0.0).to(tl.float32)
    d = tl.load(DOUT + row * width + cols, mask=m, other=0.0).to(tl.float32)
    a, da = _act_and_grad(g, ACT)
    a = a.to(DH.dtype.element_ty).to(tl.float32)
    tl.store(DH + row * 2 * width + cols, (d * u * da).to(DH.dtype.element_ty), mask=m)
    tl.store(DH + row * 2 * width + width + cols, (d * a).to(DH.dtype.element_ty), mask=m)


class _GatedActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Tensor, act: str) -> Tensor:
        shape = h.shape
        h2 = _as_rows(h)
        rows, width = h2.shape[0], h2.shape[1] // 2
        out = torch.empty((rows, width), dtype=h.dtype, device=h.device)
        block = min(1024, _block(width))
        _glu_fwd[(rows, triton.cdiv(width, block))](h2, out, rows, width, ACT=_ACT[act], BLOCK=block)
        ctx.save_for_backward(h2)
        ctx.act, ctx.shape = act, shape
        return out.view(*shape[:-1], width)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        (h2,) = ctx.saved_tensors
        rows, width = h2.shape[0], h2.shape[1] // 2
        d2 = dout.reshape(rows, width).contiguous()
        dh = torch.empty_like(h2)
        block = min(1024, _block(width))
        _glu_bwd[(rows, triton.cdiv(width, block))](d2, h2, dh, rows, width, ACT=_ACT[ctx.act], BLOCK=block)
        return dh.view(ctx.shape), None


def gated_activation(h: Tensor, act: str) -> Tensor:
    """``act(gate) * up`` for ``h = [gate; up]`` on the last dim; ``act`` is silu, gelu (erf) or gelu_tanh."""
    return _GatedActivation.apply(h, act)
