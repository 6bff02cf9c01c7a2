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


def read_prompts(path: Path) -> list[str]:
    """The prompts of ``--input-file``, one per line; a file without any is a mistake, not 0 samples."""
    from neoxcli.errors import NeoxError

    if not path.is_file():
        raise NeoxError(f"input file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise NeoxError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    if not lines:
        raise NeoxError(f"{path} holds no prompts", hint="write one prompt per line")
    return lines


def complete(
    model: Any, tokenizer: Any, text: str | None, options: SamplingOptions, seed: int, *, stream: bool
) -> str:
    """Continue ``text`` (or start from the end-of-document token) and return the new text.

    With ``stream`` the text is written to stdout as it decodes: each new token
    re-decodes everything so far and prints only what is new, so multi-byte
    characters split across tokens come out whole.
    """
    from neoxcli.generation.sampling import generate

    ids = tokenizer.encode(text) if text else []
    if not ids:
        ids = [tokenizer.eod_id] if tokenizer.eod_id is not None else tokenizer.encode("\n")
    emitted: list[int] = []
    printed = [""]

    def on_token(tok: int) -> None:
        emitted.append(tok)
        now = tokenizer.decode(emitted)
        sys.stdout.write(now[len(printed[0]) :])
        sys.stdout.flush()
        printed[0] = now

    out = generate(
        model,
        ids,
        options.max_new_tokens,
        temperature=options.temperature,
        top_k=options.top_k,
        top_p=options.top_p,
        greedy=options.greedy,
        seed=seed,
        eos_id=tokenizer.eod_id,
        stream=on_token if stream else None,
    )
    return tokenizer.decode(out)


def interact(
    model: Any, tokenizer: Any, options: SamplingOptions, read_line: Callable[[str], str] | None = None
) -> None:
    """Read prompts from the terminal (``read_line``, default ``input``) until end of input, streaming each continuation."""
    read_line = read_line or input
    print("Type a prompt and press Enter (Ctrl-D to quit).", file=sys.stderr)
    i = 0
    while True:
        try:
            line = read_line("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        complete(model, tokenizer, line, options, (options.seed + i) % 2**64, stream=True)
        print()
        i += 1


def sample_prompts(
    model: Any, tokenizer: Any, prompts: Sequence[str | None], options: SamplingOptions, *, stream: bool
) -> list[dict[str, str]]:
    """One ``{"prompt", "text"}`` record per prompt (``None``: unconditional), streamed when asked."""
    results = []
    for i, p in enumerate(prompts):
        if stream and p:
            sys.stdout.write(p)
        text = complete(model, tokenizer, p, options, (options.seed + i) % 2**64, stream=stream)
        if stream:
            print()
        results.append({"prompt": p or "", "text": text})
    return results


def run_session(
    checkpoint: Path,
    options: SamplingOptions,
    *,
    tag: str | None = None,
    prompt: str | None = None,
    input_file: Path | None = None,
    output_file: Path | None = None,
    interactive: bool = False,
    num_samples: int = 1,
) -> None:
    """Sample from a checkpoint: interactively, the prompt, the file's prompts, or ``num_samples`` unconditionally.

    Without ``output_file`` the samples stream to stdout; with it they are
    written at the end, atomically, as JSON lines.
    """
    # The one place neox generate loads a checkpoint.
    from neoxcli.checkpoint import load_for_inference
    from neoxcli.fileio import atomic_write_text, check_writable, write_error

    file_prompts = read_prompts(input_file) if input_file is not None else None
    if output_file is not None:
        check_writable(output_file)  # before the model loads and the samples are drawn
    model, tokenizer, _cfg = load_for_inference(checkpoint, tag)
    context = model.cfg.max_positions
    if options.max_new_tokens >= context:
        print(
            f"note: --max-new-tokens {options.max_new_tokens} does not fit the model's context of "
            f"{context} positions; each sample stops when the context is full "
            f"(at most {context - 1} new tokens after a one-token prompt)",
            file=sys.stderr,
        )
    if interactive:
        interact(model, tokenizer, options)
        return
    prompts: list[str | None]
    if file_prompts is not None:
        prompts = list(file_prompts)
    elif prompt is not None:
        prompts = [prompt]
    else:
        prompts = [None] * num_samples
    results = sample_prompts(model, tokenizer, prompts, options, stream=output_file is None)
    if output_file is not None:
        try:
            atomic_write_text(output_file, "".join(json.dumps(r) + "\n" for r in results))
        except OSError as exc:
            raise write_error(output_file, exc) from None
        print(f"wrote {len(results)} samples to {output_file}", file=sys.stderr)
