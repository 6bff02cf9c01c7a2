"""Slurm host list expressions: ``node[01-04,07]``, ``rack[1-2]-node[01-02]``, ``2(x3),1``.

Slurm hands a job its nodes in compressed form (``SLURM_JOB_NODELIST``) and
its task layout as run-length counts (``SLURM_TASKS_PER_NODE``). Calling
``scontrol show hostnames`` would need Slurm's client and config on every
machine that builds a hostfile, so this module parses them itself, with the
same results as ``scontrol`` (tests compare against it where it is installed).

Rules, as ``scontrol`` applies them:

* Entries are separated by commas or whitespace, except commas inside brackets.
* A bracket holds comma-separated numbers and ``lo-hi`` ranges; each keeps the
  zero padding of its lower bound (``n[009-011]``, ``n[1-010]`` is unpadded).
* Several bracket groups form a product. The last group varies fastest; the
  groups before it vary first-fastest (``a[1-2]b[3-4]c[5-6]`` gives
  ``a1b3c5 a1b3c6 a2b3c5 a2b3c6 a1b4c5 ...``), which is how Slurm orders them.
* Order and duplicates are kept, never sorted or removed.

One deliberate extension: text after the last bracket (``n[1-2]-ib``) expands
as a suffix, where Slurm 22.05 rejects the whole list; Slurm never emits it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from neoxcli.errors import NeoxError

#: Slurm refuses single ranges with more hosts than this; so do we.
MAX_RANGE = 65536
#: Upper bound on one expansion, so a typo cannot exhaust memory.
MAX_HOSTS = 1 << 20

_HINT = "expected a Slurm host list such as node[01-04,07], a1,b[2-3],c or rack[1-2]-node[01-02]"
# Numbers are at most 18 digits (Slurm's are 64-bit): int() refuses more than 4300 with a ValueError.
_RANGE = re.compile(r"([0-9]{1,18})(?:-([0-9]{1,18}))?")
_TASKS = re.compile(r"([0-9]{1,18})(?:\(x([0-9]{1,18})\))?")
_SEPARATORS = ", \t\r\n"


def _error(nodelist: str, why: str) -> NeoxError:
    return NeoxError(f"invalid host list {nodelist!r}: {why}", hint=_HINT)


def split_nodelist(nodelist: str) -> list[str]:
    """Split a host list into its top-level entries (commas inside brackets do not split)."""
    entries: list[str] = []
    current: list[str] = []
    depth = 0
    for char in nodelist:
        if char == "[":
            if depth:
                raise _error(nodelist, "nested '['")
            depth = 1
        elif char == "]":
            if not depth:
                raise _error(nodelist, "']' without a matching '['")
            depth = 0
        elif char in _SEPARATORS and not depth:
            if current:
                entries.append("".join(current))
                current = []
            continue
        current.append(char)
    if depth:
        raise _error(nodelist, "unclosed '['")
    if current:
        entries.append("".join(current))
    return entries


def _bracket_values(body: str, nodelist: str) -> list[str]:
    values: list[str] = []
    for part in body.split(","):
        match = _RANGE.fullmatch(part)
        if not match:
            raise _error(nodelist, f"bad range {part!r} in [{body}] (use numbers and lo-hi ranges)")
        lo_text, hi_text = match.groups()
        lo = int(lo_text)
        hi = lo if hi_text is None else int(hi_text)
        if hi < lo:
            raise _error(nodelist, f"range {part!r} runs backwards")
        if hi - lo + 1 > MAX_RANGE:
            raise _error(nodelist, f"range {part!r} has more than {MAX_RANGE} hosts")
        width = len(lo_text)
        values.extend(f"{n:0{width}d}" for n in range(lo, hi + 1))
    return values


def _expand_entry(entry: str, nodelist: str) -> list[str]:
    texts: list[str] = []
    groups: list[list[str]] = []
    pos = 0
    while (start := entry.find("[", pos)) != -1:
        end = entry.index("]", start)  # split_nodelist guarantees balance
        texts.append(entry[pos:start])
        groups.append(_bracket_values(entry[start + 1 : end], nodelist))
        pos = end + 1
    suffix = entry[pos:]
    if not groups:
        return [entry]
    total = 1
    for values in groups:
        total *= len(values)
    if total > MAX_HOSTS:
        raise _error(nodelist, f"{entry!r} expands to more than {MAX_HOSTS} hosts")
    # Slurm's order: leading groups first-fastest, then the last group fastest of all.
    prefixes = []
    for combo in itertools.product(*reversed(groups[:-1])):
        picked = combo[::-1]
        prefixes.append("".join(text + value for text, value in zip(texts[:-1], picked, strict=True)))
    last_text = texts[-1]
    return [prefix + last_text + value + suffix for prefix in prefixes for value in groups[-1]]


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm host list into host names, in the order ``scontrol show hostnames`` prints them.

    >>> expand_nodelist("node[01-03,07],login")
    ['node01', 'node02', 'node03', 'node07', 'login']
    """
    hosts: list[str] = []
    for entry in split_nodelist(nodelist):
        hosts.extend(_expand_entry(entry, nodelist))
        if len(hosts) > MAX_HOSTS:
            raise _error(nodelist, f"expands to more than {MAX_HOSTS} hosts")
    return hosts


_NUMBERED = re.compile(r"(.*?)([0-9]+)")


def _padded(digits: str) -> bool:
    return len(digits) > 1 and digits[0] == "0"


def _same_width(a: str, b: str) -> bool:
    # Slurm joins 99 and 100 into one range, but not 09 and 100.
    return len(a) == len(b) or not (_padded(a) or _padded(b))


def compress_nodelist(hosts: Iterable[str]) -> str:
    """Compress host names into a Slurm host list, keeping order (``expand_nodelist`` inverts it).

    Adjacent hosts that share a prefix go into one bracket and consecutive
    numbers become ranges, as ``scontrol show hostlist`` does:

    >>> compress_nodelist(["node01", "node02", "node03", "node07", "login"])
    'node[01-03,07],login'
    """
    entries: list[str] = []
    prefix: str | None = None
    ranges: list[list[str]] = []  # [lo_digits, hi_digits]

    def flush() -> None:
        if prefix is None:
            return
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            entries.append(prefix + ranges[0][0])
            return
        parts = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]
        entries.append(f"{prefix}[{','.join(parts)}]")

    for host in hosts:
        if not host or any(c in host for c in "[]" + _SEPARATORS):
            raise NeoxError(
                f"cannot compress host name {host!r}",
                hint="host names may not be empty or hold brackets, commas or spaces",
            )
        match = _NUMBERED.fullmatch(host)
        if match is None:
            flush()
            prefix, ranges = None, []
            entries.append(host)
            continue
        name, digits = match.groups()
        if name == prefix:
            hi = ranges[-1][1]
            if int(digits) == int(hi) + 1 and _same_width(digits, hi):
                ranges[-1][1] = digits
            else:
                ranges.append([digits, digits])
            continue
        flush()
        prefix, ranges = name, [[digits, digits]]
    flush()
    return ",".join(entries)


def parse_tasks_per_node(value: str) -> list[int]:
    """Expand Slurm's run-length task counts: ``"2(x3),1"`` gives ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in value.split(","):
        match = _TASKS.fullmatch(part.strip())
        if not match:
            raise NeoxError(
                f"invalid tasks-per-node value {value!r}: bad entry {part!r}",
                hint="expected Slurm's form, such as 4 or 2(x3),1 (count, then (xN) to repeat it N times)",
            )
        count, repeat = int(match.group(1)), int(match.group(2) or 1)
        if count < 1 or repeat < 1:
            raise NeoxError(f"invalid tasks-per-node value {value!r}: counts must be at least 1")
        if len(counts) + repeat > MAX_HOSTS:  # checked before the list is built: 2(x99999999999)
            raise NeoxError(f"invalid tasks-per-node value {value!r}: more than {MAX_HOSTS} hosts")
        counts.extend([count] * repeat)
    return counts
