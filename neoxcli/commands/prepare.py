"""``neox prepare``: tokenize corpora into GPT-NeoX mmap datasets, plus ``inspect`` and ``merge``.

``neox prepare FILES...`` and ``neox prepare inspect PREFIX`` share one
command name: the group below runs the tokenizing command whenever the first
argument is not ``inspect`` or ``merge`` (write ``./inspect`` for a file of
that name).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

HELP = """Tokenize .jsonl, .json or .txt files, plain or compressed (.gz, .zst), tar archives
of them (.tar, .tar.gz, .tgz, .tar.zst; streamed member by member) or - for stdin into a
GPT-NeoX mmap dataset ({output_prefix}_{key}_document.bin/.idx), or prepare a named preset.

Examples:

    neox prepare --preset python-stdlib

    neox prepare data/*.jsonl.zst --output-prefix data/mine --tokenizer HFTokenizer --vocab-file 20B_tokenizer.json --append-eod --workers 2

    neox prepare corpus.txt --output-prefix data/corpus --train-tokenizer --vocab-size 8192

    neox prepare c4-train.00000-of-01024.json.gz books.tar.gz -o data/mix --append-eod

    neox prepare inspect data/mine_text_document

    neox prepare merge data/a_text_document data/b_text_document -o data/ab_text_document
"""

RUN = "_tokenize"
SUBCOMMANDS = ("inspect", "merge")


class _PrepareGroup(TyperGroup):
    """Sends anything that is not a subcommand to the hidden tokenizing command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args:
            args = [RUN, "--help"]
        elif args[0] not in SUBCOMMANDS:
            args = [RUN, *_expand_multi(args)]
        return super().parse_args(ctx, args)


def _expand_multi(args: list[str]) -> list[str]:
    """Accept GPT-NeoX's ``--jsonl-keys a b`` (several values after one flag).

    Values run until the next option or a word that names an existing path or
    looks like one (contains a path separator, a dot or a glob character).
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        out.append(a)
        i += 1
        if a == "--jsonl-keys" and i < len(args):
            out.append(args[i])
            i += 1
            while i < len(args) and _looks_like_key(args[i]):
                out.extend(["--jsonl-keys", args[i]])
                i += 1
    return out


def _looks_like_key(word: str) -> bool:
    if word.startswith("-") or os.path.exists(word):
        return False
    return not any(c in word for c in "/\\.*?[")


_Context: Any = TyperCommand.context_class  # typer's own click, or the click package


class _RunContext(_Context):
    """Names the hidden command ``neox prepare``, e.g. in a usage error's "Try ... -h" line."""

    @property
    def command_path(self) -> str:
        return self.parent.command_path if self.parent is not None else "neox prepare"


class _RunCommand(TyperCommand):
    """Shows ``neox prepare`` (not the hidden name) in usage lines."""

    context_class = _RunContext

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        pieces = self.collect_usage_pieces(ctx)
        parent = ctx.parent.command_path if ctx.parent is not None else "neox prepare"
        formatter.write_usage(parent, " ".join(pieces))


def _parse_keys(values: list[str] | None) -> tuple[str, ...]:
    keys: list[str] = []
    for v in values or ["text"]:
        keys.extend(k for k in v.replace(",", " ").split() if k)
    return tuple(keys) or ("text",)


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


class _ProgressView:
    """A rich progress bar (docs/s, tokens/s, MB/s, ETA from input bytes), or log lines."""

    def __init__(self, total_bytes: int, num_docs: int | None, log_interval: int, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.num_docs = num_docs
        self.log_interval = max(1, log_interval)
        self._next_log = self.log_interval
        self.live = self.console.is_terminal and not quiet
        self.total = num_docs if num_docs else (total_bytes or None)
        self.by_docs = bool(num_docs)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("tokenizing", total=self.total, stats="")

    def __enter__(self) -> _ProgressView:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.progress.stop()

    def update(self, p: Any) -> None:
        el = max(p.elapsed, 1e-9)
        stats = (
            f"{_human(p.documents)} docs {_human(p.documents / el)}/s · {_human(p.tokens)} tok "
            f"{_human(p.tokens / el)}/s · {p.bytes_done / el / 1e6:.1f} MB/s"
        )
        if p.bad:
            stats += f" · {p.bad} bad"
        done = p.documents if self.by_docs else p.bytes_done
        if self.total is None and p.bytes_total:
            self.total = p.bytes_total
            self.progress.update(self.task, total=self.total)
        if self.live:
            self.progress.update(self.task, completed=done, stats=stats)
        elif not self.quiet and p.documents >= self._next_log:
            self.console.print(f"processed {stats}")
            while self._next_log <= p.documents:
                self._next_log += self.log_interval


def _install_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so partial outputs are removed."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def _print_summary(console: Any, result: Any, tok: Any) -> None:
    from rich.table import Table

    from neoxcli.data.prepare import skipped_members_note

    table = Table(title="neox prepare", show_header=True, header_style="bold")
    for col in ("dataset", "documents", "tokens", "empty"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for o in result.outputs:
        table.add_row(o.prefix, f"{o.documents:,}", f"{o.tokens:,}", f"{o.empty:,}")
    console.print(table)
    rate = result.tokens / max(result.seconds, 1e-9)
    console.print(
        f"{result.documents_read:,} documents read, {result.bad:,} bad skipped, "
        f"{result.seconds:.2f} s ({_human(rate)} tokens/s); {tok.name}, vocab {tok.vocab_size:,}, dtype {result.dtype}"
    )
    for ex in result.bad_examples:
        console.print(f"  skipped {ex}")
    note = skipped_members_note(result.skipped_members)
    if note:
        console.print(note)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        cls=_PrepareGroup,
        help=HELP,
        add_completion=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @group.command(RUN, cls=_RunCommand, hidden=True, help=HELP)
    def tokenize_cmd(
        inputs: list[str] = typer.Argument(
            None, help="Files, directories, globs, tar archives, or - for stdin."
        ),
        preset: str | None = typer.Option(
            None, "--preset", help="A named dataset: python-stdlib, enwik8, pile, ..."
        ),
        output_prefix: str | None = typer.Option(
            None, "--output-prefix", "-o", help="Output prefix; files are {prefix}_{key}_document.bin/.idx."
        ),
        tokenizer_type: str = typer.Option(
            "HFTokenizer", "--tokenizer", "--tokenizer-type", help="GPT-NeoX tokenizer type or a Hub repo id."
        ),
        vocab_file: str | None = typer.Option(
            None, "--vocab-file", "--vocab", help="Tokenizer JSON / vocab.json."
        ),
        merge_file: str | None = typer.Option(None, "--merge-file", help="merges.txt for GPT2BPETokenizer."),
        append_eod: bool = typer.Option(False, "--append-eod", help="End every document with the EOD token."),
        use_ftfy: bool = typer.Option(False, "--ftfy", help="Fix broken Unicode with ftfy first."),
        workers: int = typer.Option(1, "--workers", min=1, help="Tokenizer threads (processes with --ftfy)."),
        jsonl_keys: list[str] = typer.Option(
            None, "--jsonl-keys", help="JSON keys to read; one dataset per key (repeat or comma-separate)."
        ),
        train_tokenizer: bool = typer.Option(
            False,
            "--train-tokenizer",
            help="Train a byte-level BPE on the input first ({prefix}_tokenizer.json).",
        ),
        vocab_size: int = typer.Option(
            8192, "--vocab-size", help="Vocabulary size for --train-tokenizer / presets."
        ),
        on_bad: str = typer.Option("fail", "--on-bad", help="skip or fail on a bad input record."),
        max_docs: int | None = typer.Option(
            None, "--max-docs", min=1, help="Stop after this many documents."
        ),
        num_docs: int | None = typer.Option(
            None, "--num-docs", min=1, help="Documents expected (for the ETA)."
        ),
        log_interval: int = typer.Option(10000, "--log-interval", min=1, help="Documents between log lines."),
        data_dir: str | None = typer.Option(
            None, "--data-dir", help="Where presets go (default ./data/NAME)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output datasets."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        from neoxcli.errors import DataError

        os.environ.setdefault("RAYON_NUM_THREADS", str(workers))
        _install_sigterm()
        if on_bad not in ("skip", "fail"):
            raise DataError(f"--on-bad must be skip or fail, not {on_bad!r}")
        keys = _parse_keys(jsonl_keys)
        if preset:
            _run_preset(
                preset,
                inputs,
                data_dir,
                tokenizer_type,
                vocab_file,
                merge_file,
                workers,
                vocab_size,
                quiet,
                max_docs,
                overwrite,
            )
            return
        if not inputs:
            raise DataError("no inputs given", hint="pass files (or - for stdin), or --preset NAME")
        if not output_prefix:
            raise DataError("--output-prefix is required", hint="e.g. --output-prefix data/mydata")
        from neoxcli.data.prepare import ensure_output_absent, output_prefix_for, prepare, read_texts
        from neoxcli.data.readers import STDIN, expand_inputs, input_size
        from neoxcli.data.tokenizer import build_tokenizer, train_bpe_tokenizer
        from neoxcli.fileio import check_writable

        outputs = [output_prefix_for(output_prefix, k) for k in keys]
        ensure_output_absent(outputs, overwrite)
        if Path(outputs[0]).parent.is_dir():  # (a missing one is created, or refused, by prepare)
            check_writable(outputs[0] + ".bin")  # a read-only or full disk, before any tokenizing
        files = expand_inputs(inputs)
        if train_tokenizer:
            if STDIN in files:
                raise DataError(
                    "--train-tokenizer cannot read stdin twice", hint="write the input to a file first"
                )
            tok_path = Path(f"{output_prefix}_tokenizer.json")
            tok = train_bpe_tokenizer(read_texts(files, keys[0], max_docs), vocab_size, tok_path)
            print(f"trained tokenizer {tok_path} (vocab {tok.vocab_size})", file=sys.stderr)
        else:
            tok = build_tokenizer(tokenizer_type, vocab_file, merge_file)
        view = _ProgressView(sum(input_size(f) for f in files), num_docs, log_interval, quiet)
        with view:
            result = prepare(
                files,
                output_prefix,
                tok,
                keys,
                append_eod,
                use_ftfy,
                workers,
                on_bad,  # type: ignore[arg-type]
                max_docs,
                view.update,
            )
        _print_summary(view.console, result, tok)
        for out in result.outputs:
            if out.documents == 0:
                print(
                    f"warning: {out.prefix} holds no documents: the input had no text"
                    + (f" under the key '{out.key}'" if out.key != "text" or len(result.outputs) > 1 else "")
                    + "; `neox train` will refuse it",
                    file=sys.stderr,
                )

    @group.command(
        "inspect",
        help="Show documents, tokens, dtype, token-id range and a decoded sample.\n\n"
        "Example:\n\n    neox prepare inspect data/enwik8/enwik8_text_document --tokenizer HFTokenizer "
        "--vocab-file 20B_tokenizer.json",
    )
    def inspect_cmd(
        prefix: str = typer.Argument(..., help="Dataset prefix (with or without .bin/.idx)."),
        tokenizer_type: str | None = typer.Option(
            None, "--tokenizer", help="Tokenizer type, to decode a sample."
        ),
        vocab_file: str | None = typer.Option(
            None, "--vocab-file", help="Tokenizer file, to decode a sample."
        ),
        merge_file: str | None = typer.Option(None, "--merge-file"),
        document: int = typer.Option(0, "--document", "-d", help="Which document to show."),
        chars: int = typer.Option(400, "--chars", help="Characters of the sample to show."),
    ) -> None:
        from neoxcli.data.inspect import inspect_dataset

        print(inspect_dataset(prefix, tokenizer_type, vocab_file, merge_file, document, chars))

    @group.command(
        "merge",
        help="Concatenate datasets, keeping document boundaries.\n\n"
        "Example:\n\n    neox prepare merge data/a_text_document data/b_text_document -o data/ab_text_document",
    )
    def merge_cmd(
        prefixes: list[str] = typer.Argument(..., help="Dataset prefixes to concatenate, in order."),
        output: str = typer.Option(..., "--output", "-o", help="Output prefix."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    ) -> None:
        from neoxcli.data.indexed import normalize_prefix
        from neoxcli.data.inspect import merge_datasets
        from neoxcli.data.prepare import ensure_output_absent

        # the writer drops a .bin/.idx suffix; so must the checks, or they look at other files
        output = normalize_prefix(output)
        ensure_output_absent([output], overwrite)
        n_docs, n_tokens = merge_datasets(prefixes, output)
        print(f"wrote {output}.bin/.idx: {n_docs:,} documents, {n_tokens:,} tokens")

    app.add_typer(group, name="prepare", help=HELP)


def _run_preset(
    preset: str,
    inputs: list[str] | None,
    data_dir: str | None,
    tokenizer_type: str,
    vocab_file: str | None,
    merge_file: str | None,
    workers: int,
    vocab_size: int,
    quiet: bool,
    max_docs: int | None,
    overwrite: bool,
) -> None:
    from neoxcli.data.prepare import skipped_members_note
    from neoxcli.data.presets import STDLIB, prepare_preset
    from neoxcli.data.tokenizer import build_tokenizer
    from neoxcli.errors import DataError

    if inputs:
        raise DataError("pass either input files or --preset, not both")
    tok = None
    if preset.lower() != STDLIB and (vocab_file or tokenizer_type != "HFTokenizer"):
        tok = build_tokenizer(tokenizer_type, vocab_file, merge_file)
    out = Path(data_dir) / preset if data_dir else None
    view = _ProgressView(0, None, 10000, quiet)
    with view:
        res = prepare_preset(
            preset,
            out,
            tokenizer=tok,
            vocab_size=vocab_size,
            workers=workers,
            force=overwrite,
            max_docs=max_docs,
            progress=view.update,
        )
    state = "already prepared" if res.skipped else f"prepared in {res.seconds:.1f} s"
    view.console.print(
        f"{res.name}: {state}: {res.documents:,} documents, {res.tokens:,} tokens\n"
        f"  data_path: {res.prefix}\n  tokenizer: {res.tokenizer_type} {res.tokenizer_path or ''}"
    )
    note = skipped_members_note(res.skipped_members)
    if note:
        view.console.print(f"  {note}")
