"""Benchmark ``neox prepare`` against the raw ``tokenizers`` rate, and sample random access.

Each measurement runs in a fresh process because the tokenizers thread pool
reads ``RAYON_NUM_THREADS`` once per process. Prints tokens/s and the ratio
ours / raw at 1 and 2 workers, then samples/s of 2049-token training samples.

``--cli-mb 28`` first times the whole ``neox prepare`` command (start-up included)
on a JSON-lines file of Shakespeare paragraphs, GPT-2 tokenizer, ``--append-eod``,
2 workers: the tokenizers path (``NEOX_TIKTOKEN=0``) against the default, alternated,
with wall and CPU seconds, and checks the two outputs are byte-identical.

``--gpt-neox DIR`` times GPT-NeoX's own ``tools/datasets/preprocess_data.py`` (from the checkout
DIR) against ``neox prepare`` with the same flags (HFTokenizer, ``--append-eod``, 2 workers, mmap) on
that JSON-lines file, for the GPT-2 and the GPT-NeoX-20B tokenizer JSONs: whole commands, start-up
included, alternated round by round; prints the median wall and CPU seconds of each, the ratios,
and whether the ``.bin``/``.idx`` files are byte-identical (exits non-zero when they are not).
GPT-NeoX's script needs ``lm_dataformat``, ``ftfy``, ``tqdm``, ``transformers``, ``sentencepiece``
and torch. Its ``megatron/__init__.py`` pulls in the training argument system (DeepSpeed and
more) that preprocessing never uses, so the script runs against a stand-in package ``megatron``
whose modules are DIR's own ``megatron/tokenizer`` and ``megatron/data``, unchanged.

    python bench/prepare.py [--text FILE] [--tokenizer FILE] [--zst-mb 200] [--skip-zst]
    python bench/prepare.py --cli-mb 28 --cli-only
    python bench/prepare.py --gpt-neox ~/gpt-neox [--cli-mb 28] [--rounds 3] [--tokenizer-20b FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _child(kind: str, workers: int, text: str, tokenizer: str, extra: str) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(workers))
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--workers",
            str(workers),
            "--text",
            text,
            "--tokenizer",
            tokenizer,
            "--extra",
            extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_raw(text_path: str, tokenizer: str, workers: int) -> dict:
    """The raw library rate: encode_batch over the file's lines, ids materialised."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    if text_path.endswith(".zst"):
        import zstandard

        with open(text_path, "rb") as f:
            raw = zstandard.ZstdDecompressor().stream_reader(f).read()
        texts = [json.loads(line)["text"] for line in raw.splitlines()]
    else:
        texts = Path(text_path).read_text(encoding="utf-8").splitlines(keepends=True)
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        n = 0
        for i in range(0, len(texts), 4096):
            n += sum(len(e.ids) for e in tok.encode_batch(texts[i : i + 4096]))
        best = max(best, n / (time.perf_counter() - t))
    return {"tokens": n, "tokens_per_s": best}


def child_ours(text_path: str, tokenizer: str, workers: int, out_dir: str) -> dict:
    from neoxcli.data.prepare import prepare
    from neoxcli.data.tokenizer import build_tokenizer

    tok = build_tokenizer("HFTokenizer", tokenizer)
    best = 0.0
    for rep in range(2):
        prefix = Path(out_dir) / f"b{workers}_{rep}"
        r = prepare([text_path], prefix, tok, workers=workers, append_eod=True)
        best = max(best, r.tokens / r.seconds)
    return {"tokens": r.tokens, "tokens_per_s": best, "prefix": r.outputs[0].prefix}


def make_zst(path: Path, text_file: Path, mb: int) -> None:
    """≥ ``mb`` MB of JSON lines built from random line runs of ``text_file``."""
    import zstandard

    lines = text_file.read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(0)
    target = mb * 1_000_000
    written = 0
    cctx = zstandard.ZstdCompressor(level=3)
    with open(path, "wb") as f, cctx.stream_writer(f) as w:
        while written < target:
            a = rng.randrange(len(lines))
            doc = "".join(lines[a : a + rng.randrange(5, 200)])
            row = (json.dumps({"text": doc}) + "\n").encode()
            w.write(row)
            written += len(row)


def make_paragraph_jsonl(path: Path, text_file: Path, mb: int) -> None:
    """``mb`` MB of JSON lines, one paragraph of ``text_file`` each, repeated in order."""
    paragraphs = [p for p in text_file.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    written, i = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < mb * 1_000_000:
            row = json.dumps({"text": paragraphs[i % len(paragraphs)]}) + "\n"
            f.write(row)
            written += len(row)
            i += 1


def time_cli(src: Path, tokenizer: str, out: Path, workers: int, fast: bool) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, threads included) of one ``neox prepare`` process."""
    import resource

    env = dict(os.environ, NEOX_TIKTOKEN="1" if fast else "0")
    cmd = [sys.executable, "-m", "neoxcli", "prepare", str(src), "-o", str(out), "--tokenizer-type"]
    cmd += ["HFTokenizer", "--vocab-file", tokenizer, "--append-eod", "--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([*cmd, "--overwrite", "-q"], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cli_bench(text: Path, tokenizer: str, mb: int, workers: int = 2, rounds: int = 2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "paragraphs.jsonl"
        make_paragraph_jsonl(src, text, mb)
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(rounds):
            for fast in (False, True):
                runs[fast].append(time_cli(src, tokenizer, Path(tmp) / f"o{int(fast)}", workers, fast))
        for fast, name in ((False, "tokenizers path"), (True, "tiktoken path")):
            wall = min(w for w, _ in runs[fast])
            cpu = min(c for _, c in runs[fast])
            print(
                f"neox prepare {src.stat().st_size / 1e6:.0f} MB, {workers} workers, {name:15s}: "
                f"{wall:6.2f} s wall, {cpu:6.2f} s CPU"
            )
        slow, quick = runs[False], runs[True]
        print(
            f"speed-up: wall x{min(w for w, _ in slow) / min(w for w, _ in quick):.2f}, "
            f"CPU x{min(c for _, c in slow) / min(c for _, c in quick):.2f}"
        )
        same = all(
            (Path(tmp) / f"o0_text_document{e}").read_bytes()
            == (Path(tmp) / f"o1_text_document{e}").read_bytes()
            for e in (".bin", ".idx")
        )
        print(f"outputs byte-identical: {same}")


#: the stand-in ``megatron`` package: DIR's subpackages, without the training imports of its __init__
_MEGATRON_SHIM = """import os

__path__ = [os.path.join(os.environ["NEOX_BENCH_GPT_NEOX"], "megatron")]


def print_rank_0(*message):
    print(*message, flush=True)
"""


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the process and every child it waited for)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def gpt_neox_bench(
    gpt_neox: Path, text: Path, tokenizers: list[Path], mb: int, workers: int = 2, rounds: int = 3
) -> bool:
    """GPT-NeoX's preprocess_data.py against ``neox prepare``; True when every output is byte-identical."""
    script = gpt_neox / "tools" / "datasets" / "preprocess_data.py"
    if not script.is_file() or not (gpt_neox / "megatron" / "tokenizer").is_dir():
        sys.exit(f"{gpt_neox} is not a GPT-NeoX checkout (no tools/datasets/preprocess_data.py)")
    all_same = True
    with tempfile.TemporaryDirectory() as tmp:
        shim = Path(tmp) / "shim" / "megatron"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text(_MEGATRON_SHIM)
        src = Path(tmp) / "paragraphs.jsonl"
        make_paragraph_jsonl(src, text, mb)
        size = src.stat().st_size / 1e6
        inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        theirs_env = dict(
            os.environ,
            NEOX_BENCH_GPT_NEOX=str(gpt_neox.resolve()),
            PYTHONPATH=os.pathsep.join([str(shim.parent), *inherited]),
        )
        ours_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *inherited]))
        for tok in tokenizers:
            common = ["--tokenizer-type", "HFTokenizer", "--vocab-file", str(tok), "--append-eod"]
            common += ["--workers", str(workers)]
            theirs = [sys.executable, str(script), "--input", str(src), "--output-prefix", f"{tmp}/theirs"]
            theirs += [*common, "--dataset-impl", "mmap"]
            ours = [sys.executable, "-m", "neoxcli", "prepare", str(src), "-o", f"{tmp}/ours", *common]
            ours += ["--overwrite", "-q"]
            runs: dict[str, list[tuple[float, float]]] = {
                "GPT-NeoX preprocess_data.py": [],
                "neox prepare": [],
            }
            for _ in range(rounds):
                runs["GPT-NeoX preprocess_data.py"].append(_timed(theirs, theirs_env))
                runs["neox prepare"].append(_timed(ours, ours_env))
            med = {
                k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
                for k, v in runs.items()
            }
            print(
                f"{tok.name}: {size:.0f} MB of JSON lines, --append-eod, {workers} workers, {rounds} rounds"
            )
            for name, (wall, cpu) in med.items():
                print(f"  {name:28s} median {wall:6.2f} s wall, {cpu:6.2f} s CPU")
            (tw, tc), (ow, oc) = med.values()
            print(f"  neox prepare is x{tw / ow:.2f} faster in wall time, x{tc / oc:.2f} in CPU time")
            same = all(
                Path(f"{tmp}/theirs_text_document{e}").read_bytes()
                == Path(f"{tmp}/ours_text_document{e}").read_bytes()
                for e in (".bin", ".idx")
            )
            print(f"  .bin/.idx byte-identical to GPT-NeoX's: {same}")
            all_same = all_same and same
    return all_same


def random_access(prefix: str, n: int = 100_000) -> float:
    import numpy as np

    from neoxcli.data.gpt_dataset import GPTDataset
    from neoxcli.data.indexed import IndexedDataset

    ds = IndexedDataset(prefix)
    g = GPTDataset(ds, (0, len(ds)), n, 2048, 1234)
    order = np.random.default_rng(0).integers(0, len(g), size=n)
    for i in order[:1000]:
        g[int(i)]
    t = time.perf_counter()
    for i in order:
        g[int(i)]
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=str(SHARED / "tinyshakespeare.txt"))
    ap.add_argument("--tokenizer", default=str(SHARED / "gpt2-tokenizer.json"))
    ap.add_argument("--zst-mb", type=int, default=200)
    ap.add_argument("--skip-zst", action="store_true")
    ap.add_argument("--child", choices=["raw", "ours"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--extra", default="")
    ap.add_argument("--cli-mb", type=int, default=0, help="time the whole command on this many MB first")
    ap.add_argument("--cli-only", action="store_true")
    ap.add_argument(
        "--gpt-neox", type=Path, help="a GPT-NeoX checkout: time its preprocess_data.py against ours"
    )
    ap.add_argument("--tokenizer-20b", default=str(SHARED / "neox-20b-tokenizer.json"))
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds of the --gpt-neox comparison")
    args = ap.parse_args()
    if args.child == "raw":
        print(json.dumps(child_raw(args.text, args.tokenizer, args.workers)))
        return
    if args.child == "ours":
        print(json.dumps(child_ours(args.text, args.tokenizer, args.workers, args.extra)))
        return
    for p in (args.text, args.tokenizer):
        if not Path(p).exists():
            sys.exit(f"missing {p}")
    if args.gpt_neox is not None:
        toks = [Path(args.tokenizer), Path(args.tokenizer_20b)]
        missing = [str(t) for t in toks if not t.is_file()]
        if missing:
            sys.exit(f"missing {', '.join(missing)}")
        if not gpt_neox_bench(args.gpt_neox, Path(args.text), toks, args.cli_mb or 28, rounds=args.rounds):
            sys.exit("FAILED: neox prepare's output differs from GPT-NeoX's")
        return
    if args.cli_mb:
        cli_bench(Path(args.text), args.tokenizer, args.cli_mb)
        if args.cli_only:
            return
    with tempfile.TemporaryDirectory() as tmp:
        inputs = [("tinyshakespeare.txt", args.text)]
        if not args.skip_zst:
            zst = Path(tmp) / "gen.jsonl.zst"
            t = time.perf_counter()
            make_zst(zst, Path(args.text), args.zst_mb)
            print(
                f"generated {zst.stat().st_size / 1e6:.0f} MB .jsonl.zst ({args.zst_mb} MB of JSON) "
                f"in {time.perf_counter() - t:.0f} s"
            )
            inputs.append((f"generated {args.zst_mb} MB .jsonl.zst", str(zst)))
        prefix = None
        for name, path in inputs:
            for w in (1, 2):
                raw = _child("raw", w, path, args.tokenizer, "")
                ours = _child("ours", w, path, args.tokenizer, tmp)
                prefix = prefix or ours["prefix"]
                print(
                    f"{name:32s} workers={w}: raw encode_batch {raw['tokens_per_s'] / 1e3:8.0f}k tok/s · "
                    f"neox prepare {ours['tokens_per_s'] / 1e3:8.0f}k tok/s · ratio {ours['tokens_per_s'] / raw['tokens_per_s']:.2f}"
                )
        assert prefix is not None
        print(f"random access, 2049-token samples: {random_access(prefix) / 1e3:.0f}k samples/s")


if __name__ == "__main__":
    main()
