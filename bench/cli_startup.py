"""Start-up cost of the CLI: `neox --help` against `python -c pass`, in one run.

Usage: python bench/cli_startup.py [--runs 15]
Prints the median wall time of each and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    neox = shutil.which("neox")
    cli = [neox, "--help"] if neox else [sys.executable, "-m", "neoxcli.cli", "--help"]
    baseline = median_seconds([sys.executable, "-c", "pass"], args.runs)
    ours = median_seconds(cli, args.runs)
    train_help = median_seconds([*cli[:-1], "train", "--help"], args.runs)
    print(f"python -c pass     {baseline * 1000:8.1f} ms")
    print(f"neox --help        {ours * 1000:8.1f} ms   ratio {ours / baseline:5.2f}x")
    print(f"neox train --help  {train_help * 1000:8.1f} ms   ratio {train_help / baseline:5.2f}x")


if __name__ == "__main__":
    main()
