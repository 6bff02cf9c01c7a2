"""Turning logits into the next token: temperature, top-k, top-p, greedy; and how much prompt fits."""

from __future__ import annotations

import torch
from torch import Tensor


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus.

    Top-p keeps the smallest set of most likely tokens whose probability mass
    reaches ``top_p`` (Holtzman et al. 2020); the most likely token always stays.
    """
    logits = logits.clone()
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits[drop] = float("-inf")
    return logits


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> Tensor:
    """Pick one token per row of ``logits`` ``[B, V]``: argmax when greedy or at temperature 0."""
    if greedy or temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prompt_budget(prompt_len: int, max_len: int, max_new_tokens: int) -> int:
    """How many of the prompt's last tokens to keep in a context of ``max_len`` positions.

    Room for ``max_new_tokens`` is made by cutting only the part of the prompt
    beyond half the context: text generated after a prompt the model never
    saw is not a continuation of that prompt.
    """
    if prompt_len + max(max_new_tokens, 0) <= max_len:
        return prompt_len
    room = max(max_len - max(max_new_tokens, 0), min(prompt_len, max_len // 2))
    return max(1, min(prompt_len, room, max_len - 1))
