"""Worker entry point: ``python -m neoxcli.training.worker --config RUN/run-config.yml``.

Every launcher starts this same entry; rank, world size and rendezvous come
from whatever variables the launcher set (see ``neoxcli.parallel.distributed``).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from neoxcli.errors import NeoxError

    parser = argparse.ArgumentParser(prog="python -m neoxcli.training.worker")
    parser.add_argument("--config", required=True, help="the resolved run config written by `neox train`")
    args = parser.parse_args(argv)
    try:
        from neoxcli.config import load_config
        from neoxcli.parallel.distributed import detect
        from neoxcli.training.report import ConsoleReporter
        from neoxcli.training.trainer import train

        cfg = load_config([args.config])
        dist = detect()
        reporter = ConsoleReporter(cfg.logging.log_interval, live=False) if dist.is_main else None
        train(cfg, dist=dist, report=reporter, config_sources=[args.config])
    except NeoxError as exc:
        if os.environ.get("NEOX_DEBUG", "") not in ("", "0"):
            raise
        rank = os.environ.get("RANK", "?")
        print(f"error: [rank {rank}] {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
