"""Start training runs that a test kills: ``python kill_runner.py`` reads one JSON request per line.

torch and DeepSpeed are imported once here; each request forks a child that
runs ``neox train`` with the given arguments, so a run reaches its save loop in
a second instead of paying the imports again. The reply is the child's pid,
then (once it ended or was killed) its wait status. ``slow_prune`` makes the
child delete pruned tags slowly, file by file, so a kill lands mid-prune.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _slow_rmtree(path: str, ignore_errors: bool = False, **_: object) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
            time.sleep(0.05)
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


def _child(args: list[str], slow_prune: bool) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    code = 70
    try:
        code = _train(args, slow_prune)
    finally:
        os._exit(code)


def _train(args: list[str], slow_prune: bool) -> int:
    from neoxcli.parallel.distributed import free_port

    os.environ["MASTER_PORT"] = str(free_port())
    if slow_prune:
        import neoxcli.checkpoint.tags as tags

        tags.shutil = type("SlowShutil", (), {"rmtree": staticmethod(_slow_rmtree)})  # type: ignore[assignment]
    from neoxcli.cli import main

    return main(args)


def serve() -> None:
    # Replies go to the original stdout; whatever the libraries print goes to stderr.
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import deepspeed  # noqa: F401 - imported once, before any fork
    import torch  # noqa: F401

    import neoxcli.training.trainer  # noqa: F401

    print("ready", file=reply, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request["args"], bool(request.get("slow_prune")))
        print(pid, file=reply, flush=True)
        _, status = os.waitpid(pid, 0)
        print(status, file=reply, flush=True)


if __name__ == "__main__":
    serve()
