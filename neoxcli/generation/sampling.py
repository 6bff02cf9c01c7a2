"""Token sampling and KV-cached autoregressive generation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from neoxcli.model.gpt import GPTModel


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


def _prompt_budget(prompt_len: int, max_len: int, max_new_tokens: int) -> int:
    """How many of the prompt's last tokens to keep in a context of ``max_len`` positions.

    Room for ``max_new_tokens`` is made by cutting only the part of the prompt
    beyond half the context: text generated after a prompt the model never
    saw is not a continuation of that prompt.
    """
    if prompt_len + max(max_new_tokens, 0) <= max_len:
        return prompt_len
    room = max(max_len - max(max_new_tokens, 0), min(prompt_len, max_len // 2))
    return max(1, min(prompt_len, room, max_len - 1))


@torch.inference_mode()
def generate(
    model: GPTModel,
    prompt_ids: list[int] | Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
    eos_id: int | None = None,
    stream: Callable[[int], None] | None = None,
) -> list[int]:
    """Continue one prompt and return the new token ids (without the prompt or the EOS).

    The prompt keeps its last tokens so that prompt + ``max_new_tokens`` fits in
    ``max_positions``, but it is never cut below half the context (or its own
    length): asking for many tokens must not reduce a prompt to its last
    token. Generation stops early at ``eos_id`` or when the context is full.
    The prompt is run once, then one token at a time through a KV cache.
    Sampling draws from a private ``torch.Generator`` seeded with ``seed``, so
    a fixed seed gives the same text whatever else uses the global RNG.
    ``stream`` is called with each new token as soon as it exists.
    """
    ids = torch.as_tensor(prompt_ids, dtype=torch.long).flatten().tolist()
    if not ids:
        raise ValueError("generate needs at least one prompt token")
    max_len = model.cfg.max_positions
    ids = ids[-_prompt_budget(len(ids), max_len, max_new_tokens) :]

    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()

    was_training = model.training
    model.eval()
    try:
        cache = model.make_kv_cache(1, max_len=min(max_len, len(ids) + max_new_tokens))
        logits = model(torch.tensor([ids], device=device), kv_cache=cache)[:, -1]
        pos = len(ids)
        out: list[int] = []
        while len(out) < max_new_tokens:
            token = int(sample_next(logits, temperature, top_k, top_p, generator=generator, greedy=greedy)[0])
            if eos_id is not None and token == eos_id:
                break
            out.append(token)
            if stream is not None:
                stream(token)
            if len(out) == max_new_tokens or pos >= cache.max_len:
                break
            logits = model(torch.tensor([[token]], device=device), kv_cache=cache, start_pos=pos)[:, -1]
            pos += 1
        return out
    finally:
        model.train(was_training)
