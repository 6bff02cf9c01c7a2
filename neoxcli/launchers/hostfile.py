"""DeepSpeed-style hostfiles (``host slots=N``) and the scheduler environments they come from.

Every launcher works from one list of ``Host(name, slots)``. This module reads
and writes that list as a hostfile and builds it from what Slurm, PBS and LSF
put in a job's environment, so a cluster job needs no hand-written hostfile
and no patched runner. ``filter_hosts`` applies DeepSpeed's ``include`` /
``exclude`` syntax (``host1@host2:0,2``) on top.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from neoxcli.errors import NeoxError
from neoxcli.fileio import atomic_write_text
from neoxcli.launchers.hostlist import expand_nodelist, parse_tasks_per_node, split_nodelist

#: Most slots (ranks) one host may have: far more than any machine's GPUs or cores, and small
#: enough that a typo (slots=99999999999) is an error rather than an out-of-memory kill.
MAX_SLOTS = 4096
#: Longest count in digits; int() refuses text of more than 4300 digits with a ValueError.
_MAX_DIGITS = 18
_LINE = re.compile(rf"(\S+)\s+slots\s*=\s*([0-9]{{1,{_MAX_DIGITS}}})")
_FORMAT_HINT = "each line is `HOST slots=N`; lines starting with # are comments"
# Files are read as UTF-8 with an optional byte-order mark: editors on Windows write one,
# and kept as text it would become part of the first host's name.
_ENCODING = "utf-8-sig"


@dataclass(frozen=True)
class Host:
    """One machine and how many ranks (usually GPUs) it runs."""

    name: str
    slots: int

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() or c == "#" for c in self.name):
            raise NeoxError(
                f"invalid host name {self.name!r}", hint="host names may not be empty or hold spaces or '#'"
            )
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or self.slots < 1:
            raise NeoxError(
                f"host {self.name!r} has {self.slots!r} slots; it needs at least 1",
                hint="leave a host out with exclude instead of giving it 0 slots",
            )
        if self.slots > MAX_SLOTS:
            raise NeoxError(f"host {self.name!r} has {self.slots} slots; at most {MAX_SLOTS} are allowed")


def _unique(hosts: list[Host], source: str) -> list[Host]:
    seen: set[str] = set()
    for host in hosts:
        if host.name in seen:
            raise NeoxError(
                f"host {host.name!r} appears twice in {source}",
                hint="list each host once with its slot count",
            )
        seen.add(host.name)
    return hosts


def _is_count(text: str) -> bool:
    """Whether ``text`` is a count in ASCII digits.

    ``str.isdigit`` alone also accepts ``'²'`` (which ``int`` rejects with a
    traceback) and ``'٣'`` (which ``int`` reads as 3); hostfiles allow ``[0-9]`` only.
    Longer counts than ``_MAX_DIGITS`` are refused before ``int`` sees them.
    """
    return text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS


def _check_slots(slots: int | None) -> None:
    if slots is not None and (isinstance(slots, bool) or slots < 1):
        raise NeoxError(f"slots must be at least 1, got {slots}", hint="pass --slots N with N >= 1")
    if slots is not None and slots > MAX_SLOTS:
        raise NeoxError(f"slots must be at most {MAX_SLOTS}, got {slots}")


# --- hostfiles ---------------------------------------------------------------------------------


def parse_hostfile(text: str, source: str = "<hostfile>") -> list[Host]:
    """Parse hostfile text; errors name ``source:line``."""
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{lineno}"
        match = _LINE.fullmatch(line)
        if not match:
            raise NeoxError(f"{where}: cannot parse {raw.strip()!r}", hint=_FORMAT_HINT)
        name, slots = match.group(1), int(match.group(2))
        if name in seen:
            raise NeoxError(
                f"{where}: host {name!r} is already listed on line {seen[name]}", hint="list each host once"
            )
        if slots < 1:
            raise NeoxError(f"{where}: host {name!r} has 0 slots", hint="remove the line, or use exclude")
        if slots > MAX_SLOTS:
            raise NeoxError(f"{where}: host {name!r} has {slots} slots; at most {MAX_SLOTS} are allowed")
        seen[name] = lineno
        hosts.append(Host(name, slots))
    return hosts


def read_hostfile(path: str | os.PathLike[str]) -> list[Host]:
    """Read a DeepSpeed hostfile (``host slots=N`` per line, ``#`` comments, blank lines)."""
    path = Path(path)
    try:
        text = path.read_text(encoding=_ENCODING)
    except FileNotFoundError:
        raise NeoxError(
            f"hostfile {str(path)!r} does not exist", hint="write one with `neox hostfile`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NeoxError(f"cannot read hostfile {str(path)!r}: {exc}") from None
    hosts = parse_hostfile(text, str(path))
    if not hosts:
        raise NeoxError(f"hostfile {str(path)!r} lists no hosts", hint=_FORMAT_HINT)
    return hosts


def format_hostfile(hosts: Iterable[Host]) -> str:
    """Hostfile text: one ``host slots=N`` line per host."""
    return "".join(f"{host.name} slots={host.slots}\n" for host in hosts)


def write_hostfile(hosts: Iterable[Host], path: str | os.PathLike[str]) -> None:
    """Write a hostfile atomically, so launchers reading it never see a half-written file."""
    path = Path(path)
    text = format_hostfile(hosts)
    directory = path.parent
    if not directory.is_dir():
        raise NeoxError(f"cannot write {str(path)!r}: directory {str(directory)!r} does not exist")
    if path.is_dir():  # `-o ''` arrives as '.', where the rename would fail with EBUSY
        raise NeoxError(
            f"cannot write {str(path)!r}: it is a directory", hint="give a file name, such as -o hostfile"
        )
    try:
        atomic_write_text(path, text, keep_mode=True)
    except OSError as exc:
        raise NeoxError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


# --- Slurm -------------------------------------------------------------------------------------


def _count_list(value: str) -> int:
    """Devices in a CUDA_VISIBLE_DEVICES-style list; ``NoDevFiles`` or a -1 entry means none."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items or items[0] in ("NoDevFiles", "-1"):
        return 0
    return len(items)


def _gpus_per_node(env: Mapping[str, str]) -> int | None:
    """GPUs per node from the GPU environment, or None when it names none."""
    on_node = env.get("SLURM_GPUS_ON_NODE", "").strip()
    if on_node:
        if not _is_count(on_node):
            raise NeoxError(f"SLURM_GPUS_ON_NODE={on_node!r} is not a number", hint="pass --slots N")
        if int(on_node) > 0:
            return int(on_node)
    per_node = env.get("SLURM_GPUS_PER_NODE", "").strip()
    if per_node:
        total = 0
        for item in per_node.split(","):
            count = item.strip().rsplit(":", 1)[-1]  # "4", "gpu:4", "a100:4", "gpu:a100:4"
            if not _is_count(count):
                raise NeoxError(
                    f"cannot read a GPU count from SLURM_GPUS_PER_NODE={per_node!r}",
                    hint="expected a form like 4, gpu:4 or a100:4; or pass --slots N",
                )
            total += int(count)
        if total > 0:
            return total
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and _count_list(visible) > 0:
        return _count_list(visible)
    return None


def hosts_from_slurm(env: Mapping[str, str], slots: int | None = None) -> list[Host]:
    """Hosts of the Slurm job in ``env``.

    Slots per host are ``slots`` when given, else the GPUs per node the job's
    GPU environment reports (``SLURM_GPUS_ON_NODE``, ``SLURM_GPUS_PER_NODE``,
    ``CUDA_VISIBLE_DEVICES``; the same on every node), else the job's tasks
    per node (``SLURM_TASKS_PER_NODE``, one task per node when unset).
    """
    _check_slots(slots)
    var = "SLURM_JOB_NODELIST" if env.get("SLURM_JOB_NODELIST", "").strip() else "SLURM_NODELIST"
    nodelist = env.get(var, "").strip()
    if not nodelist:
        raise NeoxError(
            "no Slurm job here: SLURM_JOB_NODELIST is not set",
            hint="run inside an allocation (sbatch, salloc or srun), or use --from-list HOSTS",
        )
    names = expand_nodelist(nodelist)
    if not names:
        raise NeoxError(f"{var}={nodelist!r} names no hosts")
    if slots is None:
        slots = _gpus_per_node(env)
    if slots is not None:
        counts = [slots] * len(names)
    else:
        tasks = env.get("SLURM_TASKS_PER_NODE", "").strip()
        counts = parse_tasks_per_node(tasks) if tasks else [1] * len(names)
        if len(counts) != len(names):
            raise NeoxError(
                f"SLURM_TASKS_PER_NODE={tasks!r} gives {len(counts)} counts for {len(names)} hosts in {var}",
                hint="pass --slots N to set the slots of every host",
            )
    return _unique([Host(name, count) for name, count in zip(names, counts, strict=True)], var)


# --- PBS and LSF -------------------------------------------------------------------------------


def _count_hosts(names: Iterable[str]) -> list[tuple[str, int]]:
    """Hosts in order of first appearance, each with how often it appears."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return list(counts.items())


def _read_lines(path: str, var: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding=_ENCODING)
    except OSError as exc:
        raise NeoxError(f"cannot read {var}={path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise NeoxError(
            f"cannot read {var}={path!r}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def _override(pairs: list[tuple[str, int]], slots: int | None) -> list[Host]:
    return [Host(name, slots if slots is not None else count) for name, count in pairs]


def hosts_from_pbs(env: Mapping[str, str], slots: int | None = None) -> list[Host]:
    """Hosts of the PBS job in ``env``: ``PBS_NODEFILE`` lists each host once per slot."""
    _check_slots(slots)
    path = env.get("PBS_NODEFILE", "").strip()
    if not path:
        raise NeoxError(
            "no PBS job here: PBS_NODEFILE is not set",
            hint="run inside a PBS job (qsub), or use --from-list HOSTS",
        )
    names = _read_lines(path, "PBS_NODEFILE")
    if not names:
        raise NeoxError(f"PBS_NODEFILE {path!r} lists no hosts")
    return _override(_count_hosts(names), slots)


def _is_launch_host(pairs: list[tuple[str, int]]) -> bool:
    """Whether the first entry looks like a jsrun batch node rather than a compute host."""
    if len(pairs) < 2 or pairs[0][1] != 1:
        return False
    name = pairs[0][0].lower()
    return name.startswith(("batch", "login")) or all(count > 1 for _, count in pairs[1:])


def hosts_from_lsf(
    env: Mapping[str, str], slots: int | None = None, keep_launch_host: bool = False
) -> list[Host]:
    """Hosts of the LSF job in ``env``, from ``LSB_DJOB_HOSTFILE`` (one line per slot) or ``LSB_MCPU_HOSTS``.

    On jsrun clusters the first entry is the batch (launch) node, given one slot,
    where no rank may run. It is dropped, as GPT-NeoX's Summit recipe does, when
    it holds a single slot, other hosts follow, and it is named batch*/login*
    or every other host holds more slots. ``keep_launch_host`` keeps it, for
    plain LSF where the first host is a compute host too.
    """
    _check_slots(slots)
    hostfile = env.get("LSB_DJOB_HOSTFILE", "").strip()
    mcpu = env.get("LSB_MCPU_HOSTS", "").strip()
    if hostfile:
        source = f"LSB_DJOB_HOSTFILE {hostfile!r}"
        pairs = _count_hosts(_read_lines(hostfile, "LSB_DJOB_HOSTFILE"))
    elif mcpu:
        source = "LSB_MCPU_HOSTS"
        fields = mcpu.split()
        if len(fields) % 2 or not all(_is_count(count) for count in fields[1::2]):
            raise NeoxError(
                f"cannot parse LSB_MCPU_HOSTS={mcpu!r}",
                hint="expected host and slot count pairs, such as 'batch1 1 node1 42 node2 42'",
            )
        merged: dict[str, int] = {}
        for name, count in zip(fields[::2], fields[1::2], strict=True):
            merged[name] = merged.get(name, 0) + int(count)
        pairs = list(merged.items())
    else:
        raise NeoxError(
            "no LSF job here: neither LSB_DJOB_HOSTFILE nor LSB_MCPU_HOSTS is set",
            hint="run inside an LSF job (bsub), or use --from-list HOSTS",
        )
    if not keep_launch_host and _is_launch_host(pairs):
        pairs = pairs[1:]
    if not pairs:
        raise NeoxError(f"{source} lists no hosts")
    return _override(pairs, slots)


# --- explicit lists ----------------------------------------------------------------------------


def _parse_entry(entry: str, default: int) -> list[Host]:
    if entry.count(":") >= 2 and "[" not in entry:
        # An IPv6 address (fe80::1): its last group is not a slot count, which would be ambiguous.
        return [Host(entry, default)]
    name, sep, count = entry.rpartition(":")
    if not sep:
        name, count = entry, ""
    elif not _is_count(count) or not name:
        raise NeoxError(
            f"invalid host entry {entry!r}",
            hint="write HOST or HOST:SLOTS, comma-separated, such as h1,h2:4,node[01-04]:8",
        )
    slots = int(count) if count else default
    return [Host(host, slots) for host in expand_nodelist(name)]


def hosts_from_list(spec: str | os.PathLike[str], slots: int | None = None) -> list[Host]:
    """Hosts from ``"h1,h2:4,node[01-04]:8"`` or from a file of such entries (or a hostfile).

    Entries without ``:N`` get ``slots`` (default 1). A file may hold one
    entry per line, comma-separated entries, or DeepSpeed ``host slots=N`` lines.
    """
    _check_slots(slots)
    default = 1 if slots is None else slots
    text = os.fspath(spec)
    source = "the host list"
    if text and os.path.isfile(text):
        try:
            content = Path(text).read_text(encoding=_ENCODING)
        except (OSError, UnicodeDecodeError) as exc:
            raise NeoxError(f"cannot read host list {text!r}: {exc}") from None
        if re.search(r"\sslots\s*=", content):
            return read_hostfile(text)
        source = repr(text)
        text = "\n".join(line.split("#", 1)[0] for line in content.splitlines())
    elif "/" in text:
        # No host name holds '/': this is a path, and reading it as a host would write a
        # hostfile naming the path (`--from-list ./hosts.txt` with the file missing).
        why = "is a directory" if os.path.isdir(text) else "does not exist"
        raise NeoxError(
            f"host list file {text!r} {why}",
            hint="give a file of HOST[:SLOTS] entries, or the entries themselves",
        )
    hosts: list[Host] = []
    for entry in split_nodelist(text):
        hosts.extend(_parse_entry(entry, default))
    if not hosts:
        raise NeoxError(f"{source} names no hosts", hint="write HOST or HOST:SLOTS entries, such as h1,h2:4")
    return _unique(hosts, source)


# --- include / exclude -------------------------------------------------------------------------


def _parse_filter(spec: str, hosts: Mapping[str, int], option: str) -> dict[str, set[int]]:
    """``host1@host2:0,2`` as {host: slot indices}; a host without ``:`` means all its slots."""
    parsed: dict[str, set[int]] = {}
    for item in spec.split("@"):
        item = item.strip()
        if not item:
            raise NeoxError(
                f"{option} {spec!r} has an empty entry", hint="separate hosts with @, such as host1@host2:0,2"
            )
        name, sep, slot_text = item.partition(":")
        if name not in hosts:
            raise NeoxError(
                f"{option}: host {name!r} is not in the hostfile", hint=f"hosts: {', '.join(hosts)}"
            )
        count = hosts[name]
        indices = set(range(count)) if not sep else set()
        for part in slot_text.split(",") if sep else []:
            part = part.strip()
            if not _is_count(part):
                raise NeoxError(
                    f"{option} {spec!r}: bad slot {part!r} for host {name!r}",
                    hint="slots are indices such as host:0,2",
                )
            if int(part) >= count:
                raise NeoxError(f"{option}: host {name!r} has no slot {part} (it has {count}: 0-{count - 1})")
            indices.add(int(part))
        parsed[name] = parsed.get(name, set()) | indices
    return parsed


def filter_hosts(
    hosts: Sequence[Host], include: str | None = None, exclude: str | None = None
) -> dict[str, list[int]]:
    """Apply DeepSpeed's ``include``/``exclude`` filters; returns {host: slot indices}, in hostfile order.

    ``host1@host2:0,2`` names hosts separated by ``@``, each optionally with
    the slot indices (local GPU ids) meant. ``include`` keeps only those,
    ``exclude`` removes them; hosts left with no slots are dropped. With
    neither, every slot of every host is kept. ``Host(name, len(indices))``
    gives the filtered hosts for a hostfile.
    """
    include = include.strip() if include else None
    exclude = exclude.strip() if exclude else None
    if include and exclude:
        raise NeoxError("include and exclude cannot be used together", hint="use one of them")
    slots = {host.name: host.slots for host in hosts}
    if include:
        chosen = _parse_filter(include, slots, "include")
        result = {name: sorted(chosen[name]) for name in slots if name in chosen}
    else:
        removed = _parse_filter(exclude, slots, "exclude") if exclude else {}
        kept = {name: sorted(set(range(count)) - removed.get(name, set())) for name, count in slots.items()}
        result = {name: indices for name, indices in kept.items() if indices}
    if not result:
        raise NeoxError(
            "no hosts are left after include/exclude",
            hint="check the include/exclude values against the hostfile",
        )
    return result
