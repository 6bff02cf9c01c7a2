"""`neox generate`: sample text from a checkpoint (options in, ``generation.session.run_session`` out)."""

from __future__ import annotations

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
        from neoxcli.errors import NeoxError
        from neoxcli.generation.session import SamplingOptions, run_session

        # Arguments are checked before the model loads, so a mistake costs no sampling time;
        # options that would otherwise be silently ignored are refused.
        opts = {"--prompt": prompt, "--input-file": input_file, "--output-file": output_file}
        given = [name for name, value in opts.items() if value is not None]
        if interactive and given:
            raise NeoxError(f"--interactive reads prompts from the terminal, not {given[0]}")
        if prompt is not None and input_file is not None:
            raise NeoxError("give --prompt or --input-file, not both")
        if not 0 <= seed < 2**64:
            raise NeoxError(f"--seed must be between 0 and 2**64-1, got {seed}", hint="e.g. --seed 1234")
        options = SamplingOptions(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            seed=seed,
        )
        run_session(
            checkpoint,
            options,
            tag=tag,
            prompt=prompt,
            input_file=input_file,
            output_file=output_file,
            interactive=interactive,
            num_samples=num_samples,
        )
