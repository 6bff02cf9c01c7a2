"""`neox generate`: sample text from a checkpoint (options in, ``generation.session.serve`` out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = """Sample from a trained checkpoint: unconditionally, from a prompt, from a file, or interactively.

Examples:

    neox generate --checkpoint runs/quickstart --prompt "def main(" --max-new-tokens 64

    neox generate -c runs/quickstart --greedy --prompt "import "

    neox generate -c runs/quickstart --input-file prompts.txt --output-file samples.jsonl --batch-size 8

    neox generate -c runs/quickstart -p "def " -n 3 --stop "\\n\\n" --temperature 0.8

    neox generate -c runs/quickstart --interactive

    neox generate -c runs/big --tensor-parallel 2 -p "def "   # 2 local ranks, one shard each

    neox generate -c runs/quickstart --dtype bf16 -p "def "   # auto: bf16 where the device runs it fast

    neox generate my-neox-model.yml text_generation.yml      # GPT-NeoX's generate.py files

GPT-NeoX's text_generation.yml keys map to these flags: maximum_tokens is
--max-new-tokens, temperature 0.0 means --greedy, top_p 0.0 and top_k 0 mean
off, num_samples is -n, sample_input_file / sample_output_file are
--input-file / --output-file (prompts split on prompt_end), recompute is
--recompute; neox's own dtype key is --dtype. Flags given on the command line win over the files.
"""


def register(app: typer.Typer) -> None:
    @app.command("generate", help=HELP)
    def generate(
        configs: list[str] = typer.Argument(
            None,
            help="GPT-NeoX configs: the model's (its `load` names the checkpoint) and text_generation.yml.",
        ),
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", "-c", help="Checkpoint (save) directory."
        ),
        prompt: str | None = typer.Option(None, "--prompt", "-p", help="Text to continue."),
        input_file: Path | None = typer.Option(None, "--input-file", help="One prompt per line."),
        output_file: Path | None = typer.Option(None, "--output-file", help="Write JSON lines here."),
        interactive: bool = typer.Option(
            False, "--interactive", "-i", help="Read prompts from the terminal."
        ),
        num_samples: int | None = typer.Option(
            None,
            "--num-samples",
            "-n",
            min=1,
            help="Samples per prompt (without a prompt: unconditional samples). [default: 1]",
        ),
        batch_size: int | None = typer.Option(
            None,
            "--batch-size",
            min=1,
            help="Prompts sampled together (default: what 1 GiB of KV cache holds, ≤ 16).",
        ),
        stop: list[str] = typer.Option([], "--stop", help="End a sample before this text (repeatable)."),
        min_new_tokens: int = typer.Option(
            0, "--min-new-tokens", min=0, help="No end-of-document before this many."
        ),
        repetition_penalty: float = typer.Option(
            1.0, "--repetition-penalty", min=0.01, help="Divide seen tokens' logits by this (1: off)."
        ),
        max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="[default: 128]"),
        temperature: float | None = typer.Option(
            None, "--temperature", min=0.0, help="0 means greedy. [default: 1]"
        ),
        top_k: int | None = typer.Option(
            None, "--top-k", min=0, help="Keep the k most likely tokens (0: off)."
        ),
        top_p: float | None = typer.Option(
            None, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass in (0, 1] (1: off)."
        ),
        recompute: bool = typer.Option(
            False, "--recompute", help="No KV cache: rerun the sequence per token."
        ),
        greedy: bool = typer.Option(False, "--greedy", help="Always take the most likely token."),
        compile_step: bool = typer.Option(
            False,
            "--compile",
            help="torch.compile the decode step over a static KV cache (CUDA graphs on GPU); same tokens.",
        ),
        seed: int = typer.Option(1234, "--seed", help="Sampling seed (same seed, same text)."),
        tag: str | None = typer.Option(None, "--tag", help="A global_stepN tag instead of 'latest'."),
        tensor_parallel: int | None = typer.Option(
            None,
            "--tensor-parallel",
            min=1,
            help="Sample on this many local ranks, each holding its tensor-parallel shard; same text. "
            "[default: the run's model_parallel_size on GPUs, 1 on the CPU]",
        ),
        dtype: str | None = typer.Option(
            None,
            "--dtype",
            help="auto, fp32, bf16 or fp16 (GPUs only); auto: bf16 where the device runs it fast. "
            "[default: auto]",
        ),
    ) -> None:
        from neoxcli.errors import NeoxError
        from neoxcli.generation.gen_config import GenerationConfig, read_generation_config
        from neoxcli.generation.placement import (
            choose_dtype,
            choose_tensor_parallel,
            inference_device,
            run_model_parallel_size,
            visible_gpus,
        )
        from neoxcli.generation.session import SamplingOptions, check_request, load_model, serve

        # Flags win over the GPT-NeoX files, which win over the defaults.
        gen = read_generation_config(list(configs)) if configs else GenerationConfig()
        if checkpoint is None:
            if gen.checkpoint is None:
                raise NeoxError(
                    "no checkpoint: pass --checkpoint (-c) DIR, or a config whose `load` names one",
                    hint="neox generate -c runs/quickstart --prompt 'def '",
                )
            checkpoint = Path(gen.checkpoint)
        if gen.mode == "interactive" and not (prompt or input_file):
            interactive = True
        if gen.mode == "input-file" and input_file is None and prompt is None:
            if gen.input_file is None:
                raise NeoxError("text_gen_type: input-file needs sample_input_file")
            input_file = Path(gen.input_file)
        if output_file is None and gen.output_file is not None and not interactive:
            output_file = Path(gen.output_file)

        # Arguments are checked before the model loads, so a mistake costs no sampling time;
        # options that would otherwise be silently ignored are refused.
        opts = {"--prompt": prompt, "--input-file": input_file, "--output-file": output_file}
        given = [name for name, value in opts.items() if value is not None]
        if gen.return_logits and output_file is None:
            raise NeoxError("return_logits needs an output file (sample_output_file or --output-file)")
        if interactive and given:
            raise NeoxError(f"--interactive reads prompts from the terminal, not {given[0]}")
        if prompt is not None and input_file is not None:
            raise NeoxError("give --prompt or --input-file, not both")
        if any(s == "" for s in stop):
            raise NeoxError("--stop needs a non-empty text")
        new_tokens = _first(max_new_tokens, gen.max_new_tokens, 128)
        if min_new_tokens > new_tokens:
            raise NeoxError(f"--min-new-tokens ({min_new_tokens}) is above --max-new-tokens ({new_tokens})")
        nucleus = _first(top_p, gen.top_p, 1.0)
        if not 0.0 < nucleus <= 1.0:
            raise NeoxError(f"--top-p must be in (0, 1], got {nucleus}", hint="1 turns nucleus sampling off")
        if not 0 <= seed < 2**63:
            raise NeoxError(f"--seed must be in 0 … 2^63-1, got {seed}")
        device = inference_device()
        choice = choose_dtype(_first(dtype, gen.dtype, "auto"), device)
        options = SamplingOptions(
            max_new_tokens=new_tokens,
            temperature=_first(temperature, gen.temperature, 1.0),
            top_k=_first(top_k, gen.top_k, 0),
            top_p=nucleus,
            greedy=greedy or (temperature is None and gen.greedy),
            seed=seed,
            stop=tuple(s.encode().decode("unicode_escape") for s in stop),
            min_new_tokens=min_new_tokens,
            repetition_penalty=repetition_penalty,
            batch_size=batch_size,
            recompute=recompute or gen.recompute,
            return_logits=gen.return_logits,
            compile=compile_step,
        )
        request = check_request(
            checkpoint,
            options,
            tag=tag,
            prompt=prompt,
            input_file=input_file,
            output_file=output_file,
            interactive=interactive,
            num_samples=_first(num_samples, gen.num_samples, 1),
            prompt_end=gen.prompt_end if configs else None,
            dtype=choice.name,
        )
        one_process = "--interactive" if interactive else ("--compile" if compile_step else None)
        ranks, note = choose_tensor_parallel(
            tensor_parallel,
            1 if tensor_parallel is not None else run_model_parallel_size(checkpoint, tag),
            device,
            visible_gpus(),
            one_process=one_process,
        )
        if note:
            typer.echo(f"note: {note}", err=True)
        if ranks > 1:
            from neoxcli.generation.tp_worker import launch

            typer.echo(choice.line(device), err=True)
            code = launch(request, ranks)
            if code:
                raise typer.Exit(code)
            return
        loaded = load_model(checkpoint, tag, device=device, dtype=request.dtype)
        typer.echo(choice.line(device), err=True)  # after the load, so a load error stays the first line
        serve(request, *loaded)


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)
