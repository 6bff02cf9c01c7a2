"""`neox convert`: Hugging Face interop."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Convert checkpoints to or from Hugging Face Transformers format.

--to hf writes config.json, model.safetensors and the tokenizer files. The architecture follows from the model: RMSNorm + SwiGLU -> LlamaForCausalLM; learned positions, sequential residual -> GPT2LMHeadModel; rotary with a parallel residual -> GPTNeoXForCausalLM (GPTJForCausalLM when the block shares one LayerNorm). --arch forces one. Features the target cannot express are refused, never exported as a different model.

--from neox reads a checkpoint saved by EleutherAI's GPT-NeoX (flat or pipeline files, tensor-parallel shards merged) with the run's YAML that GPT-NeoX copies into global_stepN/configs/ (or --config FILES), into a neox checkpoint loadable in one process.

--from hf reads GPTNeoXForCausalLM, GPTJForCausalLM, LlamaForCausalLM and GPT2LMHeadModel directories (with their tokenizer.json) into a neox checkpoint: OUT/latest -> global_step0/ with the model states, config.yml and tokenizer.json, which `neox generate` and `neox eval` load and `neox train` trains from (load: OUT, finetune: true).

Output is written to a temporary directory and renamed into place when complete.

\b
Examples:
    neox convert runs/quickstart --to hf out/hf-model --dtype bf16
    neox convert runs/quickstart --to hf out/hf-model --push-to-hub me/my-model
    neox convert path/to/hf-model --from hf runs/imported
    neox convert gpt-neox/checkpoints --from neox runs/pythia --vocab-file 20B_tokenizer.json
"""


def register(app: typer.Typer) -> None:
    @app.command("convert", help=HELP)
    def convert(
        source: Path = typer.Argument(
            ..., help="Checkpoint directory (ours with --to, Hugging Face with --from)."
        ),
        output: Path = typer.Argument(..., help="Directory to write (must not exist, or be empty)."),
        to: str | None = typer.Option(None, "--to", metavar="FORMAT", help="Target format: hf."),
        from_: str | None = typer.Option(
            None, "--from", metavar="FORMAT", help="Source format: hf, or neox (GPT-NeoX's own checkpoints)."
        ),
        dtype: str | None = typer.Option(
            None,
            "--dtype",
            metavar="fp32|fp16|bf16",
            help="Weight dtype to write (default: as stored; fp32 for --from).",
        ),
        arch: str | None = typer.Option(
            None,
            "--arch",
            metavar="NAME",
            help="Force the Hugging Face architecture: gpt_neox, gptj, llama, gpt2.",
        ),
        tag: str | None = typer.Option(None, "--tag", help="Checkpoint tag to export (default: latest)."),
        push_to_hub: str | None = typer.Option(
            None,
            "--push-to-hub",
            metavar="REPO",
            help="After --to hf, upload to this Hub repository (token from HF_TOKEN or `hf auth login`).",
        ),
        private: bool = typer.Option(False, "--private", help="Create the Hub repository as private."),
        config: list[Path] = typer.Option(
            [],
            "--config",
            help="With --from neox: the run's config files (default: those in the checkpoint).",
        ),
        vocab_file: str | None = typer.Option(
            None,
            "--vocab-file",
            help="With --from neox: the tokenizer file, where the run's path is not here.",
        ),
        merge_file: str | None = typer.Option(
            None, "--merge-file", help="With --from neox: GPT2BPETokenizer's merges file."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    ) -> None:
        from neoxcli.errors import NeoxError

        if (to is None) == (from_ is None):
            raise NeoxError(
                "give exactly one of --to hf or --from hf", hint="e.g. neox convert CKPT --to hf OUT"
            )
        fmt = (to or from_ or "").lower()
        if from_ is not None and fmt in ("neox", "gpt-neox", "gpt_neox"):
            if push_to_hub or arch:
                raise NeoxError("--push-to-hub and --arch apply to --to hf only")
            from neoxcli.convert.neox_checkpoint import import_gpt_neox

            summary = import_gpt_neox(
                source,
                output,
                config_files=config or None,
                vocab_file=vocab_file,
                merge_file=merge_file,
                tag=tag,
                dtype=dtype or "fp32",
                overwrite=overwrite,
            )
            typer.echo(
                f"wrote the GPT-NeoX checkpoint as a neox checkpoint ({summary['parameters']:,} parameters) "
                f"to {summary['out_dir']}"
            )
            return
        if config or vocab_file or merge_file:
            raise NeoxError("--config, --vocab-file and --merge-file apply to --from neox only")
        if fmt not in ("hf", "huggingface", "transformers"):
            raise NeoxError(
                f"unknown format {fmt!r}",
                hint="formats: hf (Hugging Face Transformers); --from also takes neox (GPT-NeoX checkpoints)",
            )
        from neoxcli.convert import cli_ops

        if to is not None:
            summary = cli_ops.export_hf(source, output, dtype=dtype, tag=tag, arch=arch, overwrite=overwrite)
            typer.echo(
                f"wrote {summary['architecture']} ({summary['parameters']:,} parameters, "
                f"{summary['dtype']}) to {summary['out_dir']}"
            )
            for note in summary["notes"]:
                typer.echo(f"note: {note}", err=True)
            if push_to_hub:
                url = cli_ops.push_to_hub(output, push_to_hub, private=private)
                typer.echo(f"uploaded to {url}")
            return
        if push_to_hub or arch or tag:
            raise NeoxError("--push-to-hub, --arch and --tag apply to --to hf only")
        summary = cli_ops.import_hf(source, output, dtype=dtype or "fp32", overwrite=overwrite)
        typer.echo(
            f"wrote {summary['architecture']} as a neox checkpoint ({summary['parameters']:,} parameters) "
            f"to {summary['out_dir']}"
        )
