"""lm-eval throughput: our adapter (``NeoxLM``) against lm-eval's own ``hf`` backend on the same weights.

A random GPT-NeoX-shaped checkpoint is written with a small byte-level BPE, exported
to a Hugging Face directory, and both backends run the same local tasks
(multiple_choice and loglikelihood_rolling; generate_until with --gen) at the same
batch size on CPU. Prints requests/s of each and the ratio, and checks that
every response is identical.

    python bench/eval.py                         # 4 x 256, T=256, batch 8, 64 documents per task
    python bench/eval.py --layers 2 --hidden 64 --docs 16 --gen

With ``--ppl MB`` it instead measures that perplexity streams: ``neox eval --text``
scores a 1 MB and an MB-megabyte text (tinyshakespeare repeated, or generated
text without ../shared/data) with a small model, each in its own process, and
prints each one's peak RSS beside that of a process that only loaded the model,
and the ratio of the two scoring overheads.

    python bench/eval.py --ppl 10 --layers 2 --hidden 128 --seq 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# _common also puts this checkout first on sys.path.
from _common import add_shape_args

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

WORDS = "the quick brown fox jumps over a lazy dog while five wizards pack my box with liquor jugs".split()


def sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def write_tasks(root: Path, docs: int, gen: bool) -> list[str]:
    import yaml

    def data(name: str, rows: list[dict]) -> dict:
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test",
        }

    tasks = {
        "bench_mc": {
            **data(
                "mc",
                [
                    {"q": sentence(i, 20), "c": [sentence(i + c, 3 + c) for c in range(4)], "l": i % 4}
                    for i in range(docs)
                ],
            ),
            "output_type": "multiple_choice",
            "doc_to_text": "{{q}}",
            "doc_to_choice": "c",
            "doc_to_target": "l",
            "metric_list": [{"metric": "acc"}],
        },
        "bench_rolling": {
            **data("roll", [{"text": sentence(i, 60 + 7 * (i % 20))} for i in range(docs)]),
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "word_perplexity"}],
        },
    }
    if gen:
        tasks["bench_gen"] = {
            **data("gen", [{"p": sentence(i, 10 + i % 5), "a": "x"} for i in range(docs)]),
            "output_type": "generate_until",
            "doc_to_text": "{{p}}",
            "doc_to_target": "{{a}}",
            "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 16, "do_sample": False},
            "metric_list": [{"metric": "exact_match"}],
        }
    paths = []
    for name, body in tasks.items():
        p = root / f"{name}.yaml"
        p.write_text(yaml.safe_dump({"task": name, **body}, sort_keys=False))
        paths.append(str(p))
    return paths


def write_random_run(root: Path, args: argparse.Namespace, tok: Any, **model: Any) -> None:
    """``root/run``: a seeded random checkpoint of the model the arguments describe, with ``root/tok.json``.

    Both benches score this one model shape (rotary on a quarter of each head, parallel residual),
    so they measure the same thing; ``model`` sets further ModelConfig fields.
    """
    import torch

    from neoxcli.checkpoint import write_checkpoint
    from neoxcli.config import padded_vocab_size
    from neoxcli.config.schema import ModelConfig, NeoXConfig, TokenizerConfig
    from neoxcli.model import GPTModel

    cfg = ModelConfig(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=args.heads,
        seq_length=args.seq,
        pos_emb="rotary",
        rotary_pct=0.25,
        gpt_j_residual=True,
        **model,
    )
    torch.manual_seed(0)
    net = GPTModel(cfg, padded_vocab_size(tok.vocab_size, cfg.make_vocab_size_divisible_by, 1))
    neox_cfg = NeoXConfig(
        model=cfg, tokenizer=TokenizerConfig(tokenizer_type="HFTokenizer", vocab_file=str(root / "tok.json"))
    )
    write_checkpoint(root / "run", neox_cfg, net.state_dict(), tokenizer=tok.backend)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(ap, layers=4, hidden=256, heads=4, seq=256, batch=8)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--gen", action="store_true", help="also a generate_until task")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--ppl", type=float, default=0.0, metavar="MB", help="perplexity memory bench instead")
    ap.add_argument("--ppl-child", nargs=2, metavar=("RUN", "TEXT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ppl_child:
        ppl_child(Path(args.ppl_child[0]), args.ppl_child[1], args)
        return
    if args.ppl:
        ppl_bench(args)
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import lm_eval
    from lm_eval.tasks import TaskManager

    from neoxcli.checkpoint import load_for_inference
    from neoxcli.convert.cli_ops import export_hf
    from neoxcli.data.tokenizer import train_bpe_tokenizer
    from neoxcli.evaluation.adapter import NeoxLM
    from neoxcli.evaluation.tasks import _env_info_once

    root = Path(tempfile.mkdtemp(prefix="neox-bench-eval-"))
    tok = train_bpe_tokenizer([sentence(i, 50) for i in range(200)], 512, root / "tok.json", min_frequency=1)
    write_random_run(root, args, tok, no_weight_tying=True)
    export_hf(root / "run", root / "hf")
    tasks = write_tasks(root, args.docs, args.gen)

    def run(model_arg: object, **kw: object) -> tuple[float, int, dict]:
        t0 = time.perf_counter()
        with _env_info_once():
            out = lm_eval.simple_evaluate(
                model=model_arg,
                tasks=tasks,
                batch_size=args.batch,
                device="cpu",
                bootstrap_iters=0,
                log_samples=True,
                task_manager=TaskManager(include_defaults=False),
                **kw,
            )
        seconds = time.perf_counter() - t0
        requests = sum(len(s["arguments"]) for samples in out["samples"].values() for s in samples)
        return seconds, requests, out

    ours_model, ours_tok, _ = load_for_inference(root / "run")
    # One warm-up each (datasets are built and cached on the first call).
    run(NeoxLM(ours_model, ours_tok, batch_size=args.batch))
    hf_s, n, hf_out = run("hf", model_args=f"pretrained={root / 'hf'},dtype=float32")
    ours_s, n2, ours_out = run(NeoxLM(ours_model, ours_tok, batch_size=args.batch))
    same = all(
        [s["resps"] for s in sorted(ours_out["samples"][t], key=lambda s: s["doc_id"])]
        == [s["resps"] for s in sorted(hf_out["samples"][t], key=lambda s: s["doc_id"])]
        for t in ours_out["samples"]
    )
    print(
        f"model {args.layers}x{args.hidden}, T={args.seq}, batch {args.batch}, {n} requests, threads {torch.get_num_threads()}"
    )
    print(f"lm-eval hf backend : {hf_s:7.2f} s  {n / hf_s:8.1f} requests/s (includes its model load)")
    print(f"neox adapter       : {ours_s:7.2f} s  {n2 / ours_s:8.1f} requests/s")
    print(f"ratio (ours / hf)  : {hf_s / ours_s:.2f}x   responses identical: {same}")


def bench_text(mb: float) -> str:
    """About ``mb`` megabytes of English: tinyshakespeare repeated, or generated sentences without it."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
    base = (
        shared.read_text(encoding="utf-8")
        if shared.is_file()
        else "".join(sentence(i, 12 + i % 9) + ".\n" for i in range(20000))
    )
    want = int(mb * 1_000_000)
    return (base * (want // len(base.encode()) + 1))[:want]


def ppl_bench(args: argparse.Namespace) -> None:
    import subprocess

    from neoxcli.data.tokenizer import train_bpe_tokenizer

    root = Path(tempfile.mkdtemp(prefix="neox-bench-ppl-"))
    small, big = root / "small.txt", root / "big.txt"
    small.write_text(bench_text(1.0), encoding="utf-8")
    big.write_text(bench_text(args.ppl), encoding="utf-8")
    tok = train_bpe_tokenizer([bench_text(0.5)], 4096, root / "tok.json")
    write_random_run(root, args, tok)
    rows = {}
    for name, text in (("load only", ""), ("1 MB", str(small)), (f"{args.ppl:g} MB", str(big))):
        cmd = [sys.executable, __file__, "--ppl-child", str(root / "run"), text or "-"]
        cmd += ["--batch", str(args.batch), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
    print(f"model {args.layers}x{args.hidden}, T={args.seq} (disjoint windows), batch {args.batch}")
    base = rows["load only"]["peak_rss_mb"]
    for name, r in rows.items():
        extra = (
            f"  {r['tokens']:>9,} tokens  {r['seconds']:7.1f} s  {r['tokens_per_s']:8.0f} tok/s"
            if r["tokens"]
            else ""
        )
        print(f"{name:>10}: peak RSS {r['peak_rss_mb']:7.1f} MB{extra}")
    small_over = rows["1 MB"]["peak_rss_mb"] - base
    big_over = rows[f"{args.ppl:g} MB"]["peak_rss_mb"] - base
    print(
        f"scoring overhead: {small_over:.1f} MB for 1 MB, {big_over:.1f} MB for {args.ppl:g} MB "
        f"(ratio {big_over / max(small_over, 1e-9):.2f}x for {args.ppl:g}x the text)"
    )


def ppl_child(run: Path, text: str, args: argparse.Namespace) -> None:
    """One measurement: load the checkpoint, score ``text`` (unless "-"), print peak RSS as JSON."""
    import resource

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from neoxcli.evaluation.models import load_checkpoint
    from neoxcli.evaluation.perplexity import evaluate_text, open_source

    loaded = load_checkpoint(run, None, "cpu", "fp32")
    tokens, seconds, bpb = 0, 0.0, None
    if text != "-":
        t0 = time.perf_counter()
        row = evaluate_text(
            loaded.model,
            loaded.tokenizer,
            [open_source(text)],
            context_length=loaded.model_config.seq_length,
            batch_size=args.batch,
        )
        seconds, tokens, bpb = time.perf_counter() - t0, row.tokens, row.bits_per_byte
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(
        json.dumps(
            {
                "peak_rss_mb": peak_kb / 1024,
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds if seconds else 0.0,
                "bits_per_byte": bpb,
            }
        )
    )


if __name__ == "__main__":
    main()
