"""`neox generate`: sample text from a checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

HELP = """Sample from a trained checkpoint: unconditionally, from a prompt, from a file, or interactively.

Examples:

    neox generate --checkpoint runs/quickstart --prompt "def main(" --max-new-tokens 64

    neox generate -c runs/quickstart --greedy --prompt "import "

    neox generate -c runs/quickstart --input-file prompts.txt --output-file samples.jsonl

    neox generate -c runs/quickstart --interactive
"""


def register(app: typer.Typer) -> None:
    @app.command("generate", help=HELP)
    def generate(
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint (save) directory."),
        prompt: str | None = typer.Option(None, "--prompt", "-p", help="Text to continue."),
        input_file: Path | None = typer.Option(None, "--input-file", help="One prompt per line."),
        output_file: Path | None = typer.Option(None, "--output-file", help="Write JSON lines here."),
        interactive: bool = typer.Option(
            False, "--interactive", "-i", help="Read prompts from the terminal."
        ),
        num_samples: int = typer.Option(
            1, "--num-samples", "-n", min=1, help="Unconditional samples to draw."
        ),
        max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
        temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="0 means greedy."),
        top_k: int = typer.Option(0, "--top-k", min=0, help="Keep the k most likely tokens (0: off)."),
        top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (1: off)."),
        greedy: bool = typer.Option(False, "--greedy", help="Always take the most likely token."),
        seed: int = typer.Option(1234, "--seed", help="Sampling seed (same seed, same text)."),
        tag: str | None = typer.Option(None, "--tag", help="A global_stepN tag instead of 'latest'."),
    ) -> None:
        import json

        from neoxcli.checkpoint import load_for_inference
        from neoxcli.errors import NeoxError
        from neoxcli.fileio import check_output_file
        from neoxcli.generation import generate as gen

        # Arguments are checked before the model loads, so a mistake costs no sampling time;
        # options that would otherwise be silently ignored are refused.
        opts = {"--prompt": prompt, "--input-file": input_file, "--output-file": output_file}
        given = [name for name, value in opts.items() if value is not None]
        if interactive and given:
            raise NeoxError(f"--interactive reads prompts from the terminal, not {given[0]}")
        if prompt is not None and input_file is not None:
            raise NeoxError("give --prompt or --input-file, not both")
        file_prompts = _read_prompts(input_file) if input_file is not None else None
        if output_file is not None:
            check_output_file(output_file)
        model, tokenizer, _cfg = load_for_inference(checkpoint, tag)

        def complete(text: str | None, sample_seed: int, stream: bool) -> str:
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

            out = gen(
                model,
                ids,
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                greedy=greedy,
                seed=sample_seed,
                eos_id=tokenizer.eod_id,
                stream=on_token if stream else None,
            )
            return tokenizer.decode(out)

        if interactive:
            print("Type a prompt and press Enter (Ctrl-D to quit).", file=sys.stderr)
            i = 0
            while True:
                try:
                    line = input("> ")
                except EOFError:
                    print(file=sys.stderr)
                    return
                complete(line, seed + i, stream=True)
                print()
                i += 1

        prompts: list[str | None]
        if file_prompts is not None:
            prompts = list(file_prompts)
        elif prompt is not None:
            prompts = [prompt]
        else:
            prompts = [None] * num_samples
        results = []
        for i, p in enumerate(prompts):
            streaming = output_file is None
            if streaming and p:
                sys.stdout.write(p)
            text = complete(p, seed + i, stream=streaming)
            if streaming:
                print()
            results.append({"prompt": p or "", "text": text})
        if output_file is not None:
            from neoxcli.fileio import atomic_write_text

            atomic_write_text(output_file, "".join(json.dumps(r) + "\n" for r in results))
            print(f"wrote {len(results)} samples to {output_file}", file=sys.stderr)


def _read_prompts(path: Path) -> list[str]:
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
