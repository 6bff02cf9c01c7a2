"""The lm-evaluation-harness model adapter: a neox model and tokenizer as an ``lm_eval`` LM.

It follows the conventions of lm-eval's own ``hf`` backend, so that a checkpoint
and its Hugging Face export score every request identically (fp32, CPU):

* context/continuation split and the empty-context prefix token come from
  ``TemplateLM``; the model sees ``(context + continuation)[-(max_length + 1):][:-1]``
  and the last ``len(continuation)`` positions are scored;
* log-likelihood requests are sorted longest first, right-padded with token 0 in
  batches of ``batch_size``, and requests that share ``context + continuation[:-1]``
  reuse one forward (lm-eval's ``Collator``);
* rolling requests are cut into lm-eval's disjoint windows of ``max_length``;
* generation left-truncates the context to ``max_length - max_gen_toks``, stops at
  EOS, a stop string or ``max_gen_toks`` and cuts the stop string from the text.

Generation runs through the model's KV cache (``neoxcli.generation.decode``):
contexts of mixed lengths share a batch, left-padded under a key mask, each row
with its own positions, so a row decodes what it would alone. Sampled rows draw
from their own seeded generator, so a sample does not depend on the batch it ran in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs
from lm_eval.models.utils import postprocess_generated_text as cut_at_stop
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from neoxcli.generation.decode import generate_batch

log = logging.getLogger(__name__)

_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>")
#: generation settings this adapter applies; anything else in a task's generation_kwargs is ignored
_KNOWN_GEN_KWARGS = {"do_sample", "temperature", "top_k", "top_p", "max_gen_toks", "until"}

Request = tuple[tuple[str, str] | None, list[int], list[int]]


class NeoxLM(TemplateLM):
    """A ``GPTModel`` + neox tokenizer that lm-eval can evaluate.

    ``batch_size`` applies to every request type (lm-eval only records its own
    ``batch_size`` argument when given an LM instance). ``max_length`` defaults
    to the model's ``max_position_embeddings``, as the ``hf`` backend reads it
    from the exported config.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 1,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        seed: int = 1234,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.neox_tokenizer = tokenizer
        self._batch_size = int(batch_size)
        self._max_length = int(max_length or model.cfg.max_positions)
        self._max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self._device = torch.device(device) if device is not None else next(model.parameters()).device
        if tokenizer.eod_id is None:
            raise ValueError(f"{tokenizer!r} has no end-of-text token; lm-eval needs one")
        backend = getattr(tokenizer, "backend", None)
        bos = None
        if backend is not None:
            bos = next((i for i in map(backend.token_to_id, _BOS_CANDIDATES) if i is not None), None)
        self._prefix = bos if bos is not None else tokenizer.eod_id
        self._special = self._special_ids(backend)
        self._warned: set[str] = set()
        self.forwards = 0  # scoring forwards, for benchmarks and tests
        self.generation_batches = 0

    # ------------------------------------------------------------------ lm-eval's properties

    @property
    def eot_token_id(self) -> int:
        return int(self.neox_tokenizer.eod_id)

    @property
    def prefix_token_id(self) -> int:
        return int(self._prefix)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.neox_tokenizer.encode(string))

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``tokens``; special tokens dropped, as the ``hf`` backend decodes generations."""
        ids = list(tokens)
        backend = getattr(self.neox_tokenizer, "backend", None)
        if backend is not None:
            return backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special]
        return self.neox_tokenizer.decode(ids)

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model in its results ``config`` block."""
        params = sum(p.numel() for p in self.model.parameters())
        return {"model_num_parameters": params, "model_dtype": str(next(self.model.parameters()).dtype)}

    # ------------------------------------------------------------------ scoring

    def _special_ids(self, backend: Any) -> set[int]:
        ids = {self.neox_tokenizer.eod_id}
        if self.neox_tokenizer.pad_id is not None:
            ids.add(self.neox_tokenizer.pad_id)
        if backend is not None:
            try:
                ids |= {int(i) for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
            except AttributeError:  # older tokenizers
                pass
        return ids

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]]) -> torch.Tensor:
        """Log-probabilities ``[B, T, V]`` of right-padded ``rows`` (padding with 0, after the tokens)."""
        width = max(len(r) for r in rows)
        batch = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        self.forwards += 1
        logits = self.model(batch.to(self._device))
        return F.log_softmax(logits, dim=-1)

    def _loglikelihood_tokens(
        self,
        requests: list[Request],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """(sum log p(continuation), continuation is greedy) for tokenized requests."""
        order = Collator(
            requests,
            sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])),
            group_by="contexts",
            group_fn=lambda r: r[-2] + r[-1][:-1],
        )
        answers: list[tuple[float, bool]] = []
        for chunk in order.get_batched(n=override_bs or self._batch_size):
            rows = []
            for _, ctx, cont in chunk:
                if not ctx or not cont:
                    raise ValueError("every request needs a context token and a continuation token")
                rows.append((ctx + cont)[-(self._max_length + 1) :][:-1])
            logprobs = self._forward(rows)
            for (key, ctx, cont), row, lp in zip(chunk, rows, logprobs, strict=True):
                scored = lp[len(row) - len(cont) : len(row)][None]  # [1, len(cont), V]
                greedy = scored.argmax(dim=-1)
                for key_i, cont_i, scored_i in order.get_cache(
                    req_str=key, cxt_toks=ctx, cont_toks=cont, logits=scored
                ):
                    target = torch.as_tensor(cont_i, dtype=torch.long, device=scored_i.device)[None]
                    is_greedy = bool((greedy[:, -target.shape[1] :] == target).all())
                    picked = torch.gather(scored_i, 2, target[..., None]).squeeze(-1)
                    answer = (float(picked.sum()), is_greedy)
                    answers.append(answer)
                    if key_i is not None:
                        self.cache_hook.add_partial("loglikelihood", key_i, answer)
        return order.get_original(answers)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihoods over disjoint windows of ``max_length`` tokens."""
        windows: list[tuple[int, Request]] = []
        for index, req in enumerate(requests):
            (text,) = req.args
            pieces = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self._max_length,
                context_len=1,
            )
            windows.extend((index, (None, *make_disjoint_window(w))) for w in pieces)
        totals = [0.0] * len(requests)
        for start in range(0, len(windows), self._batch_size):
            group = windows[start : start + self._batch_size]
            scores = self._loglikelihood_tokens([w for _, w in group], override_bs=len(group))
            for (index, _), (ll, _) in zip(group, scores, strict=True):
                totals[index] += ll
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each context until a stop string, EOS or ``max_gen_toks`` (greedy unless do_sample)."""
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        jobs = []
        for index, req in enumerate(requests):
            context, raw = req.args
            kwargs = normalize_gen_kwargs(dict(raw), self._max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_gen = int(kwargs.pop("max_gen_toks"))
            room = self._max_length - max_gen
            if room <= 0:
                raise ValueError(
                    f"max_gen_toks ({max_gen}) must be smaller than the model's context ({self._max_length})"
                )
            unknown = sorted(set(kwargs) - _KNOWN_GEN_KWARGS)
            for key in unknown:
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("generation setting %r is not supported by neox's adapter; ignored", key)
            ids = self.tok_encode(context)[-room:]
            settings = (
                bool(kwargs.get("do_sample", False)),
                float(kwargs.get("temperature", 0.0) or 0.0),
                int(kwargs.get("top_k", 0) or 0),
                float(kwargs.get("top_p", 1.0) if kwargs.get("top_p") is not None else 1.0),
                max_gen,
            )
            jobs.append((index, context, ids, until, settings))
        # Requests with the same settings together, longest first (as lm-eval's hf backend orders them).
        jobs.sort(key=lambda j: (tuple(j[3]), j[4], -len(j[2]), j[1]))
        results: list[str] = [""] * len(requests)
        for batch in self._generation_batches(jobs):
            for (index, *_), text in zip(batch, self._generate_batch(batch), strict=True):
                results[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return results

    def _generation_batches(self, jobs: list[Any]) -> Iterator[list[Any]]:
        """Consecutive jobs (longest first) with the same stop strings and settings, ``batch_size`` at most.

        Contexts of different lengths share a batch: they are left-padded and the
        padding is masked, so each row decodes as it would alone.
        """
        batch: list[Any] = []
        for job in jobs:
            if batch and (len(batch) == self._batch_size or job[3:] != batch[0][3:]):
                yield batch
                batch = []
            batch.append(job)
        if batch:
            yield batch

    def _generate_batch(self, batch: list[Any]) -> list[str]:
        """Decode one batch through the KV cache (``generate_batch``: left padding under a key mask)."""
        do_sample, temperature, top_k, top_p, max_gen = batch[0][4]
        until: list[str] = batch[0][3]

        def stopped(row: int, tokens: list[int]) -> bool:
            text = self.tok_decode(tokens)
            return any(s and s in text for s in until)

        self.generation_batches += 1
        done = generate_batch(
            self.model,
            [job[2] for job in batch],
            max_gen,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=not do_sample or temperature <= 0,
            seeds=[self.seed * 1_000_003 + job[0] for job in batch],
            eos_id=self.eot_token_id,
            should_stop=stopped,
        )
        return [cut_at_stop(self.tok_decode(c.tokens), stop=until, think_end_token=None) for c in done]
