"""Worker entry point: ``python -m neoxcli.training.worker --config RUN/run-config.yml``.

Every launcher starts this same entry; rank, world size and rendezvous come
from whatever variables the launcher set (see ``neoxcli.parallel.distributed``).
When its starter asked for one, the rank beats a heartbeat for the whole run
(``neoxcli.launchers.heartbeat``), so a frozen or stuck rank ends the job.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from neoxcli.errors import NeoxError
    from neoxcli.training.interrupt import Stopped

    parser = argparse.ArgumentParser(prog="python -m neoxcli.training.worker")
    parser.add_argument("--config", required=True, help="the resolved run config written by `neox train`")
    args = parser.parse_args(argv)
    heartbeat = None
    try:
        from neoxcli.config import load_config
        from neoxcli.launchers import heartbeat as beats
        from neoxcli.parallel.distributed import collective_timeout_s, detect
        from neoxcli.training.report import ConsoleReporter
        from neoxcli.training.trainer import train

        cfg = load_config([args.config])
        dist = detect()
        timeout_s = collective_timeout_s(cfg.launcher.distributed_timeout_minutes)
        heartbeat = beats.start(dist.rank, timeout_s)
        reporter = ConsoleReporter(cfg.logging.log_interval, live=False) if dist.is_main else None
        train(cfg, dist=dist, report=reporter, config_sources=[args.config])
    except Stopped as stop:  # saved on a signal: the launcher's supervisor passes the code on
        import signal

        # Saved, uploaded and exiting: Slurm ends the step with SIGTERM as soon as a peer has
        # exited 75 (non-zero to it), which must not turn this exit 75 into a kill.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return stop.exit_code
    except NeoxError as exc:
        if os.environ.get("NEOX_DEBUG", "") not in ("", "0"):
            raise
        rank = os.environ.get("RANK", "?")
        print(f"error: [rank {rank}] {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    finally:
        if heartbeat is not None:
            heartbeat.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
