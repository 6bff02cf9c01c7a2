"""``neoxcli.cpu_memory``: a freed block is reused, not faulted in again; the override turns it off."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# A step's pattern: tensors of several sizes, two of them above glibc's largest mmap threshold
# (32 MiB), allocated and freed together; the faults of the later rounds are counted.
PROBE = """
import json, resource, torch
from neoxcli.cpu_memory import keep_freed_memory
said = keep_freed_memory()
sizes = [1 << 24, 1 << 22, 1 << 22, 3 << 20, 1 << 24, 1 << 21]
for _ in range(4):
    step = [torch.ones(n) for n in sizes]; del step
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step = [torch.ones(n) for n in sizes]; del step
print(json.dumps({"said": said, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(**env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults() -> None:
    kept = _probe()
    assert kept["said"].startswith("freed memory kept")
    as_is = _probe(NEOX_CPU_MALLOC="0")
    assert "NEOX_CPU_MALLOC=0" in as_is["said"]
    pages = 3 * (2 * (64 << 20)) // 4096  # the two large blocks of each round, if mapped afresh
    assert as_is["faults"] > pages // 2, as_is
    assert kept["faults"] < pages // 20, kept
