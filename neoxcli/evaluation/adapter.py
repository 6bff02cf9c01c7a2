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

Generation runs through the model's KV cache. The model has no padding mask, so a
generation batch holds contexts of one token length (sorted longest first, as the
``hf`` backend does); that keeps every row exactly what it would be alone.
Sampled rows draw from their own seeded generator, so a sample does not depend on
the batch it ran in.
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

from neoxcli.generation.sampling import sample_next

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
        self.forwards = 0  # model calls, for benchmarks

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
        jobs.sort(key=lambda j: (-len(j[2]), j[1]))
        results: list[str] = [""] * len(requests)
        for batch in self._generation_batches(jobs):
            for (index, *_), text in zip(batch, self._generate_batch(batch), strict=True):
                results[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return results

    def _generation_batches(self, jobs: list[Any]) -> Iterator[list[Any]]:
        """Consecutive jobs with the same context length and settings, at most ``batch_size`` each."""
        batch: list[Any] = []
        for job in jobs:
            if batch and (
                len(batch) == self._batch_size
                or len(job[2]) != len(batch[0][2])
                or job[4] != batch[0][4]
                or job[3] != batch[0][3]
            ):
                yield batch
                batch = []
            batch.append(job)
        if batch:
            yield batch

    @torch.inference_mode()
    def _generate_batch(self, batch: list[Any]) -> list[str]:
        """Decode one batch of equal-length contexts through the KV cache."""
        do_sample, temperature, top_k, top_p, max_gen = batch[0][4]
        until: list[str] = batch[0][3]
        greedy = not do_sample or temperature <= 0
        prompt = torch.tensor([job[2] for job in batch], dtype=torch.long, device=self._device)
        n, length = prompt.shape
        generators = []
        if not greedy:
            for index, *_ in batch:
                g = torch.Generator(device=self._device)
                g.manual_seed(self.seed * 1_000_003 + index)
                generators.append(g)
        cache = self.model.make_kv_cache(n, max_len=length + max_gen)
        self.forwards += 1
        logits = self.model(prompt, kv_cache=cache)[:, -1]
        out: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        pos = length
        for step in range(max_gen):
            if greedy:
                tokens = logits.argmax(dim=-1)
            else:
                tokens = torch.stack(
                    [
                        sample_next(logits[i : i + 1], temperature, top_k, top_p, generator=generators[i])[0]
                        for i in range(n)
                    ]
                )
            for i, token in enumerate(tokens.tolist()):
                if done[i]:
                    continue
                if token == self.eot_token_id:
                    done[i] = True
                    continue
                out[i].append(token)
                text = self.tok_decode(out[i])
                if any(s and s in text for s in until):
                    done[i] = True
            if all(done) or step == max_gen - 1:
                break
            self.forwards += 1
            logits = self.model(tokens[:, None], kv_cache=cache, start_pos=pos)[:, -1]
            pos += 1
        return [cut_at_stop(self.tok_decode(ids), stop=until, think_end_token=None) for ids in out]
