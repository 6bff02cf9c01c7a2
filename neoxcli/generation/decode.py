"""Generation for many prompts at once: left-padded batches through one preallocated KV cache.

Each row keeps its own positions (``0..len-1`` whatever the padding), its own
key mask (padding is never attended) and its own random generator, so a row's
tokens are the ones that prompt would get alone with the same seed. Rows that
finish (EOD, a stop, their token budget, a full context) leave the batch, and
the cache is compacted with them, so late steps cost only the live rows.

With ``compile=True`` the one-token decode step is ``torch.compile``d over a
``StaticKVCache``: every step has the same shapes (finished rows stay in the
batch, masked, instead of leaving it), so the step compiles once per batch
shape and, on CUDA, replays as a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from neoxcli.generation.sampling import prompt_budget, sample_next
from neoxcli.model.gpt import GPTModel
from neoxcli.model.kv_cache import KVCache

# Static caches are sized up to a multiple of this, so prompts of nearby lengths share one compiled step.
STATIC_CACHE_ROUND = 64


class StaticKVCache(KVCache):
    """A KV cache whose decode steps keep fixed shapes, for a compiled step.

    An ``int`` ``start_pos`` (the prompt) writes and returns a growing prefix,
    exactly as ``KVCache``. A tensor ``start_pos`` ``[1]`` (one decoded token)
    writes the key/value at that column and also into the last column, the
    scratch column, and returns the whole buffer: the caller's key mask holds
    the columns before ``start_pos``, and the query's own key is the scratch
    column, which the model's mask always lets a query see (its "diagonal").
    Attention then sees exactly the eager keys, in the same order, so the
    tokens match the eager path.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if torch.cuda.is_available() and self.keys[0].is_cuda:
            # CUDA graphs may then mutate the buffers in place instead of copying them per replay.
            for t in (*self.keys, *self.values):
                torch._dynamo.mark_static_address(t, guard=False)

    def update(self, layer: int, k: Tensor, v: Tensor, start_pos: int | Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(start_pos, Tensor):
            return super().update(layer, k, v, start_pos)
        keys, values = self.keys[layer], self.values[layer]
        keys.index_copy_(2, start_pos, k)
        values.index_copy_(2, start_pos, v)
        keys[:, :, -1:].copy_(k)
        values[:, :, -1:].copy_(v)
        return keys, values

    def select_rows(self, index: Tensor) -> None:
        raise RuntimeError("a static cache keeps its rows: finished rows are masked, not removed")


def decode_step(
    model: GPTModel, ids: Tensor, positions: Tensor, cache: StaticKVCache, column: Tensor, key_mask: Tensor
) -> Tensor:
    """Logits ``[B, V]`` of one new token per row, written at ``column`` of a static cache.

    The model's blocks are called directly (not ``GPTModel.forward``): its
    position check reads a tensor value, which would break the compiled graph;
    the decode loop keeps every position below the context itself.
    """
    x = model.embedding(ids, positions)
    for block in model.blocks:
        x = block(x, positions, cache, column, key_mask)  # type: ignore[arg-type]
    return model.head(model.final_norm(x))[:, -1]


class CompiledStep:
    """``decode_step`` through ``torch.compile``, with an exact eager fallback.

    CUDA uses mode ``reduce-overhead`` (CUDA graphs); the CPU uses inductor's
    default mode. Shapes never change within a batch (``dynamic=False``), so it
    compiles once per batch shape. ``enabled=False`` runs the same static-cache
    step eagerly (the reference the compiled one is tested against). If compiling or running the compiled step
    fails, one warning line says so and every later step runs eagerly; the step
    only writes the cache at its column, so repeating it eagerly is exact.
    """

    def __init__(self, model: GPTModel, enabled: bool = True, backend: Any = "inductor") -> None:
        self.model = model
        self.cuda = next(model.parameters()).is_cuda
        self.fn: Callable[..., Tensor] | None = None
        self.failed = False  # after one failure every later step (and batch) of this step runs eagerly
        self._cache: StaticKVCache | None = None
        self._cache_shape: tuple[int, int] = (0, 0)
        if enabled:
            try:
                mode = "reduce-overhead" if self.cuda else None
                self.fn = torch.compile(decode_step, backend=backend, mode=mode, dynamic=False)
            except Exception as exc:  # torch.compile unsupported on this platform
                self._fail(exc)

    def cache_for(self, batch: int, columns: int) -> StaticKVCache:
        """A static cache of this shape, the same one for every batch of that shape.

        Reusing the buffers keeps their addresses, so a CUDA graph recorded for
        one batch replays for the next; what an earlier batch left in them is
        never attended (the key mask only opens columns written by this one).
        """
        if self._cache is None or self._cache_shape != (batch, columns):
            self._cache = None  # free the old buffers before allocating new ones
            self._cache = _static_cache(self.model, batch, columns)
            self._cache_shape = (batch, columns)
        return self._cache

    def _fail(self, exc: BaseException) -> None:
        import sys

        if not self.failed:
            root = exc
            while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
                root = inner  # torch wraps the compiler's own error: name that one
            first = f"{type(root).__name__}: {(str(root).strip().splitlines() or [''])[0][:200]}"
            print(
                f"warning: --compile: compiling the decode step failed, decoding eagerly ({first})",
                file=sys.stderr,
            )
        self.failed = True
        self.fn = None

    def __call__(
        self, ids: Tensor, positions: Tensor, cache: StaticKVCache, column: Tensor, key_mask: Tensor
    ) -> Tensor:
        if self.fn is not None:
            try:
                out = self.fn(self.model, ids, positions, cache, column, key_mask)
                # A CUDA graph's output is overwritten by its next replay: keep our own copy.
                return out.clone() if self.cuda else out
            except Exception as exc:
                self._fail(exc)
        return decode_step(self.model, ids, positions, cache, column, key_mask)


def static_supported(model: GPTModel) -> str | None:
    """Why ``model`` cannot decode through a static cache (None: it can)."""
    attn = model.blocks[0].attention
    if any(b.attention.window is not None for b in model.blocks):
        return "local (sliding-window) attention"
    if attn.alibi is not None:
        return "ALiBi"  # its bias would be measured from the buffer's end: equal only up to rounding
    return None


@dataclass
class Completion:
    """One row's result: the new tokens (without the prompt or the EOD) and why it stopped."""

    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    truncated_prompt: int = 0  # prompt tokens cut from the front to fit the context
    finished: bool = False  # stopped at EOD or a stop condition, not at a length limit
    reason: str = "length"  # "eod", "stop", "length" (max_new_tokens) or "context" (context full)
    logits: list[float] = field(default_factory=list)  # with return_logits: each new token's raw logit


def apply_repetition_penalty(logits: Tensor, seen: list[int], penalty: float) -> Tensor:
    """CTRL's penalty (Keskar et al. 2019): seen tokens' logits divided by ``penalty`` if positive, else multiplied."""
    if penalty == 1.0 or not seen:
        return logits
    ids = torch.tensor(sorted(set(seen)), device=logits.device)
    picked = logits[..., ids]
    logits = logits.clone()
    logits[..., ids] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


@torch.inference_mode()
def generate_batch(
    model: GPTModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    seeds: Sequence[int | None] | None = None,
    eos_id: int | None = None,
    min_new_tokens: int = 0,
    repetition_penalty: float = 1.0,
    should_stop: Callable[[int, list[int]], bool] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    pad_id: int = 0,
    recompute: bool = False,
    return_logits: bool = False,
    compile: bool = False,
    step: CompiledStep | None = None,
) -> list[Completion]:
    """Continue every prompt; returns one ``Completion`` per prompt, in order.

    ``seeds[i]`` seeds row ``i``'s private generator (None: a fresh random seed).
    ``should_stop(i, tokens)`` lets the caller end row ``i`` (e.g. a stop string
    in the decoded text; the tokens are kept); ``on_token(i, token)`` sees each
    token as it is drawn. EOD is never drawn before ``min_new_tokens``.
    ``recompute`` runs the whole sequence again for every token instead of
    reading the KV cache (GPT-NeoX's ``recompute``): the same tokens, slower.
    ``return_logits`` records the model's logit of every token it drew (GPT-NeoX's key).
    ``compile`` decodes through a compiled step over a static cache (see
    ``CompiledStep``; pass ``step`` to reuse one across batches); models it
    cannot serve exactly (ALiBi, local attention) and ``recompute`` decode eagerly.
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt token per prompt")
    max_len = model.cfg.max_positions
    device = next(model.parameters()).device
    results: list[Completion] = []
    rows: list[list[int]] = []
    for prompt in prompts:
        keep = prompt_budget(len(prompt), max_len, max_new_tokens)
        rows.append([int(t) for t in prompt[len(prompt) - keep :]])
        results.append(Completion(prompt_tokens=keep, truncated_prompt=len(prompt) - keep))
    gens = []
    for i in range(len(rows)):
        g = torch.Generator(device=device)
        seed = seeds[i] if seeds is not None else None
        g.manual_seed(seed) if seed is not None else g.seed()
        gens.append(g)

    lengths = [len(r) for r in rows]
    width = max(lengths)
    limits = [min(max_len, n + max_new_tokens) for n in lengths]  # positions a row may feed
    static = (compile or step is not None) and not recompute and static_supported(model) is None
    was_training = model.training
    model.eval()
    try:
        batch = len(rows)
        total = width + max(max_new_tokens, 1)
        cache: KVCache | None = None
        if static:
            step = step or CompiledStep(model)
            # One scratch column past the end; rounding lets nearby prompt lengths share a compiled step.
            columns = -(-(total + 1) // STATIC_CACHE_ROUND) * STATIC_CACHE_ROUND
            cache = step.cache_for(batch, columns)
            key_mask = torch.zeros(batch, columns, dtype=torch.bool, device=device)
        elif not recompute:
            cache = model.make_kv_cache(batch, max_len=total)
        if not static:
            key_mask = torch.zeros(batch, total, dtype=torch.bool, device=device)
        ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
        for b, row in enumerate(rows):
            ids[b, width - len(row) :] = torch.tensor(row, device=device)
            key_mask[b, width - len(row) : width] = True
        pads = torch.tensor([width - n for n in lengths], device=device)
        positions = (torch.arange(width, device=device)[None] - pads[:, None]).clamp(min=0)
        seq, all_pos = ids, positions  # the whole sequence so far, for recompute
        # Without padding (one prompt, or equal lengths) no key mask is needed: the plain causal path.
        padded = len(set(lengths)) > 1
        mask = (lambda n: key_mask[:, :n]) if padded else (lambda n: None)
        logits = model(ids, position_ids=positions, kv_cache=cache, key_mask=mask(width), last_only=True)[
            :, -1
        ]
        live = list(range(batch))  # original row index of each batch row
        # Batch rows still drawing tokens: all of ``live`` when finished rows leave the batch; with a
        # static cache they stay (fixed shapes) and only these are sampled.
        active = list(range(batch))
        n = 0
        while active and max_new_tokens > 0:
            if len(active) < len(logits):
                logits = logits.index_select(0, torch.tensor(active, device=device))
            raw = logits if return_logits else None  # before penalties and masks, as the model gave them
            rows_now = [live[j] for j in active]
            if eos_id is not None and min_new_tokens:
                young = torch.tensor(
                    [len(results[i].tokens) < min_new_tokens for i in rows_now], device=device
                )
                if bool(young.any()):
                    logits = logits.clone()
                    logits[young, eos_id] = float("-inf")
            if repetition_penalty != 1.0:
                logits = torch.cat(
                    [
                        apply_repetition_penalty(
                            logits[j : j + 1], rows[i] + results[i].tokens, repetition_penalty
                        )
                        for j, i in enumerate(rows_now)
                    ]
                )
            if greedy or temperature <= 0:
                tokens = logits.argmax(dim=-1).tolist()  # one call for the batch: no per-row work
            else:
                tokens = [
                    int(sample_next(logits[j : j + 1], temperature, top_k, top_p, gens[i])[0])
                    for j, i in enumerate(rows_now)
                ]
            keep: list[int] = []
            for j, (i, token) in enumerate(zip(rows_now, tokens, strict=True)):
                res = results[i]
                if eos_id is not None and token == eos_id:
                    res.finished, res.reason = True, "eod"
                    continue
                res.tokens.append(token)
                if raw is not None:
                    res.logits.append(float(raw[j, token]))
                if on_token is not None:
                    on_token(i, token)
                if should_stop is not None and should_stop(i, res.tokens):
                    res.finished, res.reason = True, "stop"
                elif len(res.tokens) >= max_new_tokens:
                    res.reason = "length"
                elif lengths[i] + len(res.tokens) - 1 >= limits[i]:  # the last position was fed
                    res.reason = "context"
                else:
                    keep.append(j)
            if not keep:
                break
            start = width + n
            if static:
                assert isinstance(cache, StaticKVCache) and step is not None
                # Finished rows keep feeding padding at position 0; their outputs are never read.
                active = [active[j] for j in keep]
                fed = [pad_id] * batch
                where = [0] * batch
                for j, t in zip(active, (tokens[j] for j in keep), strict=True):
                    fed[j] = t
                    where[j] = lengths[live[j]] + len(results[live[j]].tokens) - 1
                step_ids = torch.tensor(fed, device=device)[:, None]
                positions = torch.tensor(where, device=device)[:, None]
                column = torch.tensor([start], device=device)
                logits = step(step_ids, positions, cache, column, key_mask)
                key_mask[:, start] = True  # the token just fed is history from the next step on
                n += 1
                continue
            if len(keep) < len(live):
                index = torch.tensor(keep, device=device)
                if cache is not None:
                    cache.select_rows(index)
                key_mask = key_mask.index_select(0, index)
                pads = pads.index_select(0, index)
                live = [live[j] for j in keep]
                tokens = [tokens[j] for j in keep]
                active = list(range(len(live)))
            key_mask[:, start] = True
            positions = torch.tensor([[lengths[i] + len(results[i].tokens) - 1] for i in live], device=device)
            step_ids = torch.tensor([[t] for t in tokens], device=device)
            if recompute:
                rows_kept = torch.tensor(keep, device=device)
                seq = torch.cat([seq.index_select(0, rows_kept), step_ids], dim=1)
                all_pos = torch.cat([all_pos.index_select(0, rows_kept), positions], dim=1)
                logits = model(seq, position_ids=all_pos, key_mask=mask(start + 1), last_only=True)[:, -1]
            else:
                logits = model(
                    step_ids,
                    position_ids=positions,
                    kv_cache=cache,
                    start_pos=start,
                    key_mask=mask(start + 1),
                    last_only=True,
                )[:, -1]
            n += 1
        return results
    finally:
        model.train(was_training)


def _static_cache(model: GPTModel, batch: int, columns: int) -> StaticKVCache:
    """A ``StaticKVCache`` sized like ``model.make_kv_cache`` (local heads of a tensor-parallel shard)."""
    attn = model.blocks[0].attention
    ref = attn.query_key_value.weight
    return StaticKVCache(
        model.cfg.num_layers, batch, attn.kv_heads, columns, attn.head_dim, dtype=ref.dtype, device=ref.device
    )


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
    (done,) = generate_batch(
        model,
        [ids],
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        seeds=[seed],
        eos_id=eos_id,
        on_token=(lambda _row, token: stream(token)) if stream is not None else None,
    )
    return done.tokens
