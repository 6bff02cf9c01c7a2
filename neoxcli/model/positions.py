"""Position encodings: rotary (RoPE), ALiBi and fixed sinusoids.

Learned absolute positions are a plain ``nn.Embedding`` in the embedding layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from neoxcli.kernels import rotary_torch


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) on the first ``dim`` channels of each head.

    Uses the rotate-half convention of GPT-NeoX and Hugging Face: channel ``i``
    pairs with channel ``i + dim/2`` and turns at frequency ``base^(-2i/dim)``.
    Angles are computed in fp32 from the positions themselves, so there is no
    table to outgrow and no state in checkpoints.
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dimension must be even, got {dim}")
        self.dim = dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """``[B|1, T]`` positions -> cos, sin of shape ``[B|1, 1, T, dim]`` in fp32."""
        angles = position_ids.float()[..., None] * self.inv_freq.float()
        angles = torch.cat((angles, angles), dim=-1)[:, None]
        return angles.cos(), angles.sin()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate the first ``dim`` channels of ``x`` ``[B, H, T, D]``; the rest pass through."""
        return rotary_torch(x, cos, sin, self.dim)


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022) for any head count.

    For a power of two ``n`` the slopes are ``2^(-8/n)``, ``2^(-16/n)``, ...; other
    counts take the slopes of the nearest lower power of two and fill up with
    every other slope of the next power of two, as the paper prescribes.
    """

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    lower = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(lower)
    if lower < num_heads:
        slopes += geometric(2 * lower)[0::2][: num_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


def sinusoidal_table(position_ids: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Fixed sinusoidal positions (Vaswani et al. 2017) as GPT-NeoX lays them out: ``[sin | cos]``."""
    inv_freq = 1.0 / (
        base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=position_ids.device) / dim)
    )
    angles = position_ids.float()[..., None] * inv_freq
    return torch.cat((angles.sin(), angles.cos()), dim=-1)
