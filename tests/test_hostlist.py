"""Slurm host list parsing: unit tests, and agreement with the real `scontrol` where it is installed."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from neoxcli.errors import NeoxError
from neoxcli.launchers.hostlist import (
    MAX_RANGE,
    compress_nodelist,
    expand_nodelist,
    parse_tasks_per_node,
    split_nodelist,
)

# --- expand_nodelist -----------------------------------------------------------------------------

EXPANSIONS = [
    ("node01", ["node01"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("n[009-011]", ["n009", "n010", "n011"]),
    ("n[1-010]", [f"n{i}" for i in range(1, 11)]),  # padding follows the lower bound only
    ("n[01-2]", ["n01", "n02"]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("n[1,03,5-6]", ["n1", "n03", "n5", "n6"]),
    ("n[0-0]", ["n0"]),
    ("n[00]", ["n00"]),
    ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
    ("r[1-3]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2", "r3n1", "r3n2"]),
    ("n[1-2][3-4]", ["n13", "n14", "n23", "n24"]),
    # three or more groups: last group fastest, the others first-fastest (as scontrol orders them)
    ("a[1-2]b[3-4]c[5-6]", ["a1b3c5", "a1b3c6", "a2b3c5", "a2b3c6", "a1b4c5", "a1b4c6", "a2b4c5", "a2b4c6"]),
    ("a[1-2]b[3-4]c[5]", ["a1b3c5", "a2b3c5", "a1b4c5", "a2b4c5"]),
    ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("n[1-2],m[1-2]", ["n1", "n2", "m1", "m2"]),
    ("n[2-3],n1", ["n2", "n3", "n1"]),  # order kept, never sorted
    ("n1,n[1-2]", ["n1", "n1", "n2"]),  # duplicates kept
    ("n[1-3,2]", ["n1", "n2", "n3", "n2"]),
    ("node1.example.com,gpu-node-[1-2]", ["node1.example.com", "gpu-node-1", "gpu-node-2"]),
    ("a.b-c[1-2]", ["a.b-c1", "a.b-c2"]),
    ("n1-ib,n2-ib", ["n1-ib", "n2-ib"]),
    ("node_1,N2", ["node_1", "N2"]),
    ("[1-3]", ["1", "2", "3"]),
    ("a b\tc\nd", ["a", "b", "c", "d"]),  # whitespace separates, as in scontrol
    ("a,,b,", ["a", "b"]),
    ("", []),
    ("n[99999999998-99999999999]", ["n99999999998", "n99999999999"]),
    # extension beyond Slurm 22.05, which rejects text after the last bracket
    ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
]


@pytest.mark.parametrize(("nodelist", "expected"), EXPANSIONS)
def test_expand(nodelist: str, expected: list[str]) -> None:
    assert expand_nodelist(nodelist) == expected


def test_expand_large_range() -> None:
    hosts = expand_nodelist("n[001-1000]")
    assert len(hosts) == 1000 and hosts[0] == "n001" and hosts[98] == "n099" and hosts[-1] == "n1000"
    assert len(expand_nodelist(f"n[1-{MAX_RANGE}]")) == MAX_RANGE


@pytest.mark.parametrize(
    ("nodelist", "why"),
    [
        ("node[01-", "unclosed '['"),
        ("node[", "unclosed '['"),
        ("node]", "without a matching"),
        ("node[3-1]", "runs backwards"),
        ("n[]", "bad range ''"),
        ("n[1-]", "bad range '1-'"),
        ("n[-2]", "bad range '-2'"),
        ("n[1--2]", "bad range"),
        ("n[a-b]", "bad range 'a-b'"),
        ("n[1x2]", "bad range"),
        ("n[,1]", "bad range ''"),
        ("n[1,]", "bad range ''"),
        ("n[ 1-2]", "bad range"),
        ("n[[1-2]]", "nested"),
        ("n[1-2]]", "without a matching"),
        (f"n[1-{MAX_RANGE + 1}]", "more than"),
        ("a[1-60000]b[1-60000]", "more than"),
        ("n[1-" + "9" * 5000 + "]", "bad range"),  # more digits than int() converts
    ],
)
def test_expand_rejects_malformed(nodelist: str, why: str) -> None:
    with pytest.raises(NeoxError) as info:
        expand_nodelist(nodelist)
    assert why in info.value.message
    assert repr(nodelist) in info.value.message
    assert info.value.hint and "node[01-04,07]" in info.value.hint


def test_split_keeps_bracket_commas() -> None:
    assert split_nodelist("a[1,2],b, c[3-4,6]") == ["a[1,2]", "b", "c[3-4,6]"]


# --- compress_nodelist ---------------------------------------------------------------------------

COMPRESSIONS = [
    (["node01", "node02", "node03", "node04", "node07"], "node[01-04,07]"),
    (["n1", "n3", "n2"], "n[1,3,2]"),
    (["n09", "n10", "n11"], "n[09-11]"),
    (["n9", "n10"], "n[9-10]"),
    (["n99", "n100"], "n[99-100]"),
    (["n099", "n100"], "n[099-100]"),
    (["n09", "n100"], "n[09,100]"),  # a padded and an unpadded width never share a range
    (["n1", "n01"], "n[1,01]"),
    (["n10", "n11", "n012"], "n[10-11,012]"),
    (["n1", "n1", "n2"], "n[1,1-2]"),
    (["b1", "a1", "b2"], "b1,a1,b2"),
    (["x", "n1", "n2", "y"], "x,n[1-2],y"),
    (["r1n1", "r1n2", "r2n1"], "r1n[1-2],r2n1"),
    (["n1.ib", "n2.ib"], "n1.ib,n2.ib"),
    (["a", "a"], "a,a"),
    (["node"], "node"),
    ([], ""),
]


@pytest.mark.parametrize(("hosts", "expected"), COMPRESSIONS)
def test_compress(hosts: list[str], expected: str) -> None:
    assert compress_nodelist(hosts) == expected
    assert expand_nodelist(expected) == hosts


def test_compress_round_trips_random_lists() -> None:
    rng = random.Random(7)
    for _ in range(200):
        hosts = [
            rng.choice(["n", "gpu-", "r1n", "x.y", ""])
            + str(rng.randint(0, 120)).zfill(rng.choice([1, 2, 3]))
            for _ in range(rng.randint(1, 20))
        ]
        hosts += rng.sample(["login", "a.b", "c-d"], rng.randint(0, 2))
        assert expand_nodelist(compress_nodelist(hosts)) == hosts


@pytest.mark.parametrize("bad", ["", "a,b", "a b", "n[1]"])
def test_compress_rejects_unlistable_names(bad: str) -> None:
    with pytest.raises(NeoxError):
        compress_nodelist([bad])


# --- parse_tasks_per_node ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", [1]),
        ("4", [4]),
        ("2(x3),1", [2, 2, 2, 1]),
        ("1(x2)", [1, 1]),
        ("8(x2),4,2(x1)", [8, 8, 4, 2]),
        (" 2(x2) ", [2, 2]),
    ],
)
def test_tasks_per_node(value: str, expected: list[int]) -> None:
    assert parse_tasks_per_node(value) == expected


@pytest.mark.parametrize(
    "bad",
    [
        *("", "x", "2(x)", "2(3)", "2(x3", "2,,1", "0", "2(x0)", "-1", "2 (x3)"),
        "2(x99999999999)",  # refused before a list of 10**11 counts is built
        "1" * 5000,  # more digits than int() converts
    ],
)
def test_tasks_per_node_rejects(bad: str) -> None:
    with pytest.raises(NeoxError) as info:
        parse_tasks_per_node(bad)
    assert repr(bad) in info.value.message


# --- oracle: the real scontrol -------------------------------------------------------------------

SCONTROL = shutil.which("scontrol")
needs_scontrol = pytest.mark.skipif(
    SCONTROL is None, reason="scontrol not on PATH (apt-get install slurm-client) - oracle comparison skipped"
)

HAND_WRITTEN = [
    "node01",
    "node[01-04,07]",
    "n[009-011]",
    "n[1-010]",
    "n[9-011]",
    "n[01-2]",
    "n[1,03,5-6]",
    "n[00]",
    "rack[1-2]-node[01-02]",
    "n[1-2][3-4]",
    "a[1-2]b[3-4]c[5-6]",
    "a[1-2]b[3-4]c[5-6]d[7-8]",
    "a[1-3]b[3]c[5-6]",
    "a1,b[2-3],c",
    "n[2-3],n1,n[1-3,2]",
    "node1.example.com,gpu-node-[1-2],a.b-c[01-03]",
    "[1-3],x",
    "a b,c",
    "n[001-1000]",
    "n[99999999998-99999999999]",
]


def _generated(count: int, seed: int = 20) -> list[str]:
    """Random host lists in every shape Slurm emits (and a few it merely accepts)."""
    rng = random.Random(seed)
    prefixes = ["node", "n", "gpu-", "cn.", "r1n", "a.b-c", "x_"]

    def bracket() -> str:
        width = rng.choice([1, 1, 2, 3, 4])
        parts = []
        for _ in range(rng.randint(1, 4)):
            lo = rng.randint(0, 120)
            if rng.random() < 0.6:
                parts.append(f"{lo:0{width}d}-{lo + rng.randint(0, 12)}")
            else:
                parts.append(f"{lo:0{width}d}")
        return "[" + ",".join(parts) + "]"

    def entry() -> str:
        kind = rng.random()
        if kind < 0.25:
            return rng.choice(prefixes) + str(rng.randint(0, 300))
        text = rng.choice(prefixes) + bracket()
        for _ in range(rng.choice([0, 0, 1, 2])):
            text += rng.choice(["-", "n", "-node", ""]) + bracket()
        return text

    return [",".join(entry() for _ in range(rng.randint(1, 4))) for _ in range(count)]


ORACLE_CASES = HAND_WRITTEN + _generated(30)


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment pointing scontrol at a throwaway slurm.conf: it only reads the file, no daemon."""
    conf = Path(tmp_path_factory.mktemp("slurm")) / "slurm.conf"
    conf.write_text(
        "ClusterName=neoxtest\nSlurmctldHost=localhost\nNodeName=localhost CPUs=1 State=UNKNOWN\n"
    )
    return {**os.environ, "SLURM_CONF": str(conf)}


def _scontrol(env: dict[str, str], *args: str) -> str:
    assert SCONTROL is not None
    done = subprocess.run([SCONTROL, *args], env=env, capture_output=True, text=True, timeout=30)
    assert "Invalid hostlist" not in done.stdout + done.stderr, (
        f"scontrol rejected {args[-1]!r}: {done.stderr}"
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_scontrol
@pytest.mark.parametrize("nodelist", ORACLE_CASES)
def test_expand_matches_scontrol(slurm_env: dict[str, str], nodelist: str) -> None:
    expected = _scontrol(slurm_env, "show", "hostnames", nodelist).split()
    assert expand_nodelist(nodelist) == expected


@needs_scontrol
@pytest.mark.parametrize("nodelist", [n for n in ORACLE_CASES if " " not in n])
def test_compress_matches_scontrol(slurm_env: dict[str, str], nodelist: str) -> None:
    hosts = expand_nodelist(nodelist)
    expected = _scontrol(slurm_env, "show", "hostlist", ",".join(hosts)).strip()
    assert compress_nodelist(hosts) == expected


@needs_scontrol
@pytest.mark.parametrize("nodelist", ["node[3-1]", "n[]", "n[a-b]", "n[,1]", "n[1x2]", "n[[1-2]]"])
def test_rejects_what_scontrol_rejects(slurm_env: dict[str, str], nodelist: str) -> None:
    assert SCONTROL is not None
    done = subprocess.run(
        [SCONTROL, "show", "hostnames", nodelist], env=slurm_env, capture_output=True, text=True
    )
    assert "Invalid hostlist" in done.stdout + done.stderr
    with pytest.raises(NeoxError):
        expand_nodelist(nodelist)
