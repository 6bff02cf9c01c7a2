"""Sampling sessions over a checkpoint: prompts from the caller, a file or the terminal, streamed as text.

``run_session`` is ``neox generate``: it reads the prompt file and checks the
output file before the model loads (a mistake costs no loading time), loads
the checkpoint, then samples each prompt, writing the text to stdout as it
decodes, or collects the samples into a JSON-lines file. Sample ``i`` uses
seed ``seed + i``, so the same seed gives the same text. The token-level
sampling itself is ``neoxcli.generation.sampling``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SamplingOptions:
    """How each sample is drawn (``neox generate``'s sampling flags)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    seed: int = 1234
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    batch_size: int | None = None  # None: as many rows as the memory budget allows (at most 16)
    recompute: bool = False  # no KV cache (GPT-NeoX's recompute): same tokens, slower
    return_logits: bool = False  # each record carries the logit of every generated token
    compile: bool = False  # decode through a torch.compile'd step over a static KV cache

    def record(self) -> dict[str, Any]:
        """The settings written next to every sample."""
        return {
            "temperature": 0.0 if self.greedy else self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "stop": list(self.stop),
        }


def read_prompts(path: Path, prompt_end: str | None = None) -> list[str]:
    """The prompts of ``--input-file``; a file without any is a mistake, not 0 samples."""
    from neoxcli.generation.gen_config import read_prompt_file

    return read_prompt_file(path, prompt_end)


def complete(
    model: Any,
    tokenizer: Any,
    text: str | None,
    options: SamplingOptions,
    seed: int,
    *,
    stream: bool,
    step: Any = None,
) -> str:
    """Continue ``text`` (or start from the end-of-document token) and return the new text.

    With ``stream`` the text is written to stdout as it decodes: each new token
    re-decodes everything so far and prints only what is new, so multi-byte
    characters split across tokens come out whole. ``step`` is a
    ``CompiledStep`` reused across calls (``options.compile``).
    """
    from neoxcli.generation.decode import generate_batch

    ids = tokenizer.encode(text) if text else []
    if not ids:
        ids = [tokenizer.eod_id] if tokenizer.eod_id is not None else tokenizer.encode("\n")
    printed = [""]

    def on_token(_row: int, tokens_so_far: list[int]) -> None:
        now = _cut_at_stop(tokenizer.decode(tokens_so_far), options.stop)[0]
        sys.stdout.write(now[len(printed[0]) :])
        sys.stdout.flush()
        printed[0] = now

    emitted: list[int] = []

    def stop_rule(_row: int, tokens: list[int]) -> bool:
        hit = _cut_at_stop(tokenizer.decode(tokens), options.stop)[1]
        if stream:
            on_token(_row, tokens)
        return hit

    (done,) = generate_batch(
        model,
        [ids],
        options.max_new_tokens,
        temperature=options.temperature,
        top_k=options.top_k,
        top_p=options.top_p,
        greedy=options.greedy,
        seeds=[seed],
        eos_id=tokenizer.eod_id,
        min_new_tokens=options.min_new_tokens,
        repetition_penalty=options.repetition_penalty,
        should_stop=stop_rule if (options.stop or stream) else None,
        recompute=options.recompute,
        compile=options.compile,
        step=step,
    )
    emitted.extend(done.tokens)
    return _cut_at_stop(tokenizer.decode(emitted), options.stop)[0]


def auto_batch_size(model: Any, max_len: int, budget_bytes: int = 1 << 30, cap: int = 16) -> int:
    """Rows per batch: as many KV caches of ``max_len`` positions as fit ``budget_bytes`` (1 GiB), at most ``cap``."""
    attn = model.layers[1].attention
    itemsize = next(model.parameters()).element_size()
    per_row = 2 * model.cfg.num_layers * attn.kv_heads * attn.head_dim * max_len * itemsize
    return max(1, min(cap, budget_bytes // max(per_row, 1)))


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def sample_prompts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | None],
    options: SamplingOptions,
    *,
    stream: bool,
    samples_per_prompt: int = 1,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    step: Any = None,
) -> list[dict[str, Any]]:
    """One record per (prompt, sample), in input order, as GPT-NeoX's generate.py writes them.

    Fields: ``context``/``prompt``, ``text``, ``length`` (new tokens),
    ``finished`` (stopped at EOD or a stop string), ``message``,
    ``duration_seconds``, ``seed`` and the sampling settings. Request ``r``
    (prompt-major) uses seed ``seed + r``. Requests run in batches of similar
    prompt length; a single prompt to the terminal streams instead.
    ``on_result`` sees each record as its batch finishes. With
    ``options.compile`` every batch shares one compiled step (``step``, or a new one).
    """
    import time

    from neoxcli.generation.decode import CompiledStep, generate_batch

    if options.compile and step is None and not options.recompute:
        step = CompiledStep(model)

    requests: list[tuple[int, str | None, list[int]]] = []
    for p in prompts:
        ids = tokenizer.encode(p) if p else []
        if not ids:
            ids = [tokenizer.eod_id] if tokenizer.eod_id is not None else tokenizer.encode("\n")
        for _ in range(samples_per_prompt):
            requests.append((len(requests), p, ids))
    if stream and len(requests) == 1:
        _, p, _ids = requests[0]
        if p:
            sys.stdout.write(p)
        t0 = time.perf_counter()
        text = complete(model, tokenizer, p, options, options.seed, stream=True, step=step)
        print()
        text, stopped = _cut_at_stop(text, options.stop)
        record = _record(p, text, len(tokenizer.encode(text)) if text else 0, stopped, options, 0, t0)
        if on_result is not None:
            on_result(record)
        return [record]

    max_len = model.cfg.max_positions
    size = options.batch_size or auto_batch_size(model, max_len)
    order = sorted(range(len(requests)), key=lambda r: (len(requests[r][2]), r))
    records: list[dict[str, Any] | None] = [None] * len(requests)
    cut_prompts = capped = 0
    printed = 0  # samples go to the terminal in input order, as soon as all before them are done
    bar = _progress(len(requests)) if progress else None
    try:
        for start in range(0, len(order), size):
            chunk = [requests[r] for r in order[start : start + size]]
            t0 = time.perf_counter()

            def stop_rule(row: int, tokens: list[int]) -> bool:
                return _cut_at_stop(tokenizer.decode(tokens), options.stop)[1]

            done = generate_batch(
                model,
                [ids for _, _, ids in chunk],
                options.max_new_tokens,
                temperature=options.temperature,
                top_k=options.top_k,
                top_p=options.top_p,
                greedy=options.greedy,
                seeds=[options.seed + r for r, _, _ in chunk],
                eos_id=tokenizer.eod_id,
                min_new_tokens=options.min_new_tokens,
                repetition_penalty=options.repetition_penalty,
                should_stop=stop_rule if options.stop else None,
                recompute=options.recompute,
                return_logits=options.return_logits,
                compile=options.compile,
                step=step,
            )
            for (r, p, _ids), out in zip(chunk, done, strict=True):
                cut_prompts += out.truncated_prompt > 0
                capped += out.reason == "context"
                text, stopped = _cut_at_stop(tokenizer.decode(out.tokens), options.stop)
                record = _record(p, text, len(out.tokens), out.finished or stopped, options, r, t0)
                if options.return_logits:
                    record["logits"] = out.logits
                records[r] = record
                if on_result is not None:
                    on_result(record)
            while stream and printed < len(records) and records[printed] is not None:
                _print_sample(records[printed], printed, len(requests))
                printed += 1
            if bar is not None:
                bar[0].update(bar[1], advance=len(chunk))
    finally:
        if bar is not None:
            bar[0].stop()
    if cut_prompts or capped:
        print(
            f"note: {cut_prompts} prompt(s) were cut from the front and {capped} sample(s) stopped at the "
            f"context limit of {max_len} tokens (max_position_embeddings)",
            file=sys.stderr,
        )
    return [r for r in records if r is not None]


def _record(
    prompt: str | None, text: str, length: int, finished: bool, options: SamplingOptions, r: int, t0: float
) -> dict[str, Any]:
    import time

    return {
        "context": prompt or "",
        "prompt": prompt or "",
        "text": text,
        "length": length,
        "finished": finished,
        "message": None,
        "duration_seconds": time.perf_counter() - t0,
        "seed": options.seed + r,
        **options.record(),
    }


def _print_sample(record: dict[str, Any], r: int, total: int) -> None:
    if total > 1:
        print(f"--- sample {r + 1}/{total} ---")
    print(record["context"] + record["text"])


def _progress(total: int) -> tuple[Any, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    bar.start()
    return bar, bar.add_task("samples", total=total)


def check_request(
    checkpoint: Path,
    options: SamplingOptions,
    *,
    tag: str | None = None,
    prompt: str | None = None,
    input_file: Path | None = None,
    output_file: Path | None = None,
    interactive: bool = False,
    num_samples: int = 1,
    prompt_end: str | None = None,
    dtype: str = "fp32",
) -> SessionRequest:
    """The request of one ``neox generate`` run, its files checked before any model loads.

    The prompt file is read (a mistake costs no loading time), the output
    file checked writable and ``dtype`` (``auto``, ``fp32``, ``bf16``,
    ``fp16``) resolved for this machine's device; ``serve`` then runs it on
    one process, or ``neoxcli.generation.tp_worker.launch`` on tensor-parallel ranks.
    """
    from neoxcli.fileio import check_writable
    from neoxcli.generation.placement import choose_dtype, inference_device

    file_prompts = read_prompts(input_file, prompt_end) if input_file is not None else None
    if output_file is not None:
        check_writable(output_file)  # before the model loads and the samples are drawn
    resolved = choose_dtype(dtype, inference_device()).name
    return SessionRequest(
        str(checkpoint), options, tag, prompt, file_prompts, output_file, interactive, num_samples, resolved
    )


def run_session(checkpoint: Path, options: SamplingOptions, **request: Any) -> None:
    """Sample from a checkpoint in this process: interactively, the prompt, the file's prompts, or unconditionally.

    Without ``output_file`` the samples stream to stdout; with it they are
    written as they finish, then atomically in input order, as JSON lines.
    Keywords as ``check_request``.
    """
    from neoxcli.generation.placement import inference_device

    checked = check_request(checkpoint, options, **request)
    serve(checked, *load_model(checkpoint, checked.tag, device=inference_device(), dtype=checked.dtype))


@dataclass(frozen=True)
class SessionRequest:
    """What one ``neox generate`` run samples, checked already: every rank of a sharded run gets the same one."""

    checkpoint: str
    options: SamplingOptions
    tag: str | None = None
    prompt: str | None = None
    file_prompts: list[str] | None = None
    output_file: Path | None = None
    interactive: bool = False
    num_samples: int = 1
    dtype: str = "fp32"  # resolved already (fp32, bf16 or fp16): every rank samples in the same format


def load_model(
    checkpoint: str | Path, tag: str | None, *, device: str = "cpu", dtype: str = "fp32"
) -> tuple[Any, Any]:
    """(model, tokenizer) of a neox, Hugging Face or GPT-NeoX directory on ``device`` in ``dtype``.

    The one loader of neox generate; ``dtype`` is a resolved name (``neoxcli.generation.placement``).
    """
    from neoxcli.convert.any_model import load_any_for_inference
    from neoxcli.generation.placement import torch_dtype

    model, tokenizer, _cfg = load_any_for_inference(checkpoint, tag, device)
    return model.to(dtype=torch_dtype(dtype)), tokenizer


def serve(request: SessionRequest, model: Any, tokenizer: Any) -> None:
    """Run ``request`` on a loaded model (the whole model, or this rank's tensor-parallel shard)."""
    options = request.options
    context = model.cfg.max_positions
    if options.max_new_tokens >= context:
        print(
            f"note: --max-new-tokens {options.max_new_tokens} does not fit the model's context of "
            f"{context} positions; each sample stops when the context is full "
            f"(at most {context - 1} new tokens after a one-token prompt)",
            file=sys.stderr,
        )
    step = _compiled_step(model, options)
    if request.interactive:
        import functools

        from neoxcli.generation.interactive import interact

        interact(model, tokenizer, options, functools.partial(complete, step=step))
        return
    prompts: list[str | None]
    if request.file_prompts is not None:
        prompts = list(request.file_prompts)
    elif request.prompt is not None:
        prompts = [request.prompt]
    else:
        prompts = [None]
    num_samples, output_file = request.num_samples, request.output_file
    if output_file is None:
        sample_prompts(
            model, tokenizer, prompts, options, stream=True, samples_per_prompt=num_samples, step=step
        )
        return
    results = _write_as_they_come(model, tokenizer, prompts, options, output_file, num_samples, step)
    print(f"wrote {len(results)} samples to {output_file}", file=sys.stderr)


def _compiled_step(model: Any, options: SamplingOptions) -> Any:
    """The one compiled decode step of a ``--compile`` session (None without it), or why there is none."""
    if not options.compile:
        return None
    from neoxcli.generation.decode import CompiledStep, static_supported

    why = "--recompute reads no cache" if options.recompute else static_supported(model)
    if why is not None:
        print(f"note: --compile is not used: {why}; decoding eagerly", file=sys.stderr)
        return None
    return CompiledStep(model)


def _write_as_they_come(
    model: Any,
    tokenizer: Any,
    prompts: list[str | None],
    options: SamplingOptions,
    output_file: Path,
    num_samples: int,
    step: Any = None,
) -> list[dict[str, Any]]:
    """Samples go to a temp file as each batch finishes, then the file is rewritten in input order.

    Interrupted, the samples finished so far are kept (renamed into place) and
    the message says how many.
    """
    import os

    from neoxcli.fileio import atomic_write_text, write_error

    tmp = output_file.with_name(f".{output_file.name}.partial")
    as_text = output_file.suffix == ".txt"
    kept = 0
    with open(tmp, "w", encoding="utf-8") as fh:

        def keep(record: dict[str, Any]) -> None:
            nonlocal kept
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            kept += 1

        try:
            results = sample_prompts(
                model,
                tokenizer,
                prompts,
                options,
                stream=False,
                samples_per_prompt=num_samples,
                on_result=keep,
                progress=sys.stderr.isatty(),
                step=step,
            )
        except KeyboardInterrupt:
            fh.close()
            os.replace(tmp, output_file)
            print(f"interrupted: kept the {kept} finished samples in {output_file}", file=sys.stderr)
            raise
    if as_text:
        body = "".join(
            f"=== sample {i + 1}/{len(results)} (seed {r['seed']}) ===\n{r['context']}{r['text']}\n"
            for i, r in enumerate(results)
        )
    else:
        body = "".join(json.dumps(r) + "\n" for r in results)
    try:
        atomic_write_text(output_file, body)
    except OSError as exc:
        raise write_error(output_file, exc) from None
    tmp.unlink(missing_ok=True)
    return results
