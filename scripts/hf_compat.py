"""Check that `neox convert --to hf` exports load in other Transformers versions.

Exports one tiny model per architecture (GPT-NeoX, GPT-J, Llama with GQA,
GPT-2), then, under each given Python interpreter (e.g. a venv with
``transformers<5``), loads each with ``AutoModelForCausalLM`` and
``AutoTokenizer`` and prints the loading problems and the max |logit diff|
against our model. Run from the repository root:

    python -m venv --system-site-packages /tmp/tf4 && /tmp/tf4/bin/pip install "transformers>=4.45,<5"
    python scripts/hf_compat.py --python python /tmp/tf4/bin/python
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

LOADER = r"""
import sys, torch, transformers
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
root = Path(sys.argv[1]); ids = torch.load(root / "ids.pt")
worst = 0.0
for d in sorted(root.glob("hf-*")):
    arch = d.name[3:]
    model, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True)
    with torch.no_grad():
        out = model.eval()(ids).logits.float()
    ref = torch.load(root / f"ref-{arch}.pt")
    diff = (out - ref).abs().max().item()
    worst = max(worst, diff)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    tok = type(AutoTokenizer.from_pretrained(d)).__name__
    print(f"transformers {transformers.__version__:8s} {arch:9s} {type(model).__name__:20s} "
          f"max|diff| {diff:.1e}  missing/unexpected {problems or 'none'}  tokenizer {tok}")
sys.exit(0 if worst <= 1e-5 else 1)
"""


def export(root: Path) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_convert_cli import ARCHS, BASE, write_neox_checkpoint

    from neoxcli.checkpoint import load_for_inference
    from neoxcli.cli import main
    from neoxcli.config.schema import ModelConfig
    from neoxcli.data.tokenizer import train_bpe_tokenizer

    tok = root / "tokenizer.json"
    train_bpe_tokenizer(
        ["def f(x):\n    return x + 1\n" * 50, "hello world " * 40], 300, tok, min_frequency=1
    )
    ids = torch.randint(0, 290, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.save(ids, root / "ids.pt")
    for arch, (_, extra) in sorted(ARCHS.items()):
        run = root / f"run-{arch}"
        write_neox_checkpoint(run, ModelConfig(**{**BASE, **extra}), tok)
        if main(["convert", str(run), "--to", "hf", str(root / f"hf-{arch}")]) != 0:
            raise SystemExit(f"export failed for {arch}")
        model, _, _ = load_for_inference(run)
        with torch.no_grad():
            torch.save(model(ids), root / f"ref-{arch}.pt")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", nargs="+", default=[sys.executable], help="interpreters to load with")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export(root)
        codes = [subprocess.run([py, "-c", LOADER, str(root)]).returncode for py in args.python]
    return max(codes)


if __name__ == "__main__":
    raise SystemExit(main())
