"""`neox hostfile` end to end through `neoxcli.cli.main`, plus the hostfile library it uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from neoxcli.cli import main
from neoxcli.errors import NeoxError
from neoxcli.launchers import hostfile as hf
from neoxcli.launchers.hostfile import Host

SCHEDULER_PREFIXES = ("SLURM_", "PBS_", "LSB_", "CUDA_VISIBLE_DEVICES")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any real scheduler environment (CI may itself run inside a job)."""
    for name in list(os.environ):
        if name.startswith(SCHEDULER_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.delenv("NEOX_DEBUG", raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["hostfile", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


# --- --slurm -------------------------------------------------------------------------------------


def test_slurm_tasks_per_node(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[01-03,07]")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2(x3),1")
    code, out, err = run(capsys, "--slurm")
    assert code == 0, err
    assert out == "node01 slots=2\nnode02 slots=2\nnode03 slots=2\nnode07 slots=1\n"


@pytest.mark.parametrize(
    ("gpu_env", "slots"),
    [
        ({"SLURM_GPUS_ON_NODE": "4"}, 4),
        ({"SLURM_GPUS_PER_NODE": "gpu:4"}, 4),
        ({"SLURM_GPUS_PER_NODE": "a100:8"}, 8),
        ({"SLURM_GPUS_PER_NODE": "gpu:a100:2"}, 2),
        ({"SLURM_GPUS_PER_NODE": "3"}, 3),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
        ({"SLURM_GPUS_ON_NODE": "6", "SLURM_GPUS_PER_NODE": "gpu:4", "CUDA_VISIBLE_DEVICES": "0"}, 6),
        ({"SLURM_GPUS_ON_NODE": "0", "CUDA_VISIBLE_DEVICES": "0,1"}, 2),
        ({"CUDA_VISIBLE_DEVICES": ""}, 1),  # no GPUs: fall back to tasks per node
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, 1),
    ],
)
def test_slurm_gpus_per_node(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, gpu_env: dict[str, str], slots: int
) -> None:
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[1-2]")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "1(x2)")
    for name, value in gpu_env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "--slurm")
    assert code == 0, err
    assert out == f"gpu1 slots={slots}\ngpu2 slots={slots}\n"


def test_slurm_slots_flag_wins(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_NODELIST", "rack[1-2]-n[1-2]")  # the older variable name is read too
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "1(x4)")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    code, out, _ = run(capsys, "--slurm", "--slots", "8")
    assert code == 0
    assert out.splitlines() == [f"{h} slots=8" for h in ("rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2")]


def test_slurm_without_tasks_per_node_gives_one_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hf.hosts_from_slurm({"SLURM_JOB_NODELIST": "a,b"}) == [Host("a", 1), Host("b", 1)]


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({}, ("SLURM_JOB_NODELIST is not set", "hint:")),
        ({"SLURM_JOB_NODELIST": "node[01-"}, ("invalid host list", "unclosed")),
        ({"SLURM_JOB_NODELIST": "node[3-1]"}, ("runs backwards",)),
        (
            {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2)"},
            ("2 counts for 3 hosts", "--slots"),
        ),
        ({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x"}, ("tasks-per-node",)),
        ({"SLURM_JOB_NODELIST": "n1", "SLURM_GPUS_PER_NODE": "gpu:lots"}, ("SLURM_GPUS_PER_NODE",)),
        ({"SLURM_JOB_NODELIST": "n1,n1"}, ("appears twice",)),
        ({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x99999999999)"}, ("more than",)),
        ({"SLURM_JOB_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "99999999999"}, ("at most 4096",)),
    ],
)
def test_slurm_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    fragments: tuple[str, ...],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "--slurm")
    assert out == ""
    assert_user_error(code, err, *fragments)


# --- --pbs and --lsf -----------------------------------------------------------------------------


def test_pbs_counts_lines_per_host(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nodefile = tmp_path / "nodes"
    nodefile.write_text("c2\nc1\nc2\nc1\nc2\n\nc3.cluster\n")
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    code, out, _ = run(capsys, "--pbs")
    assert code == 0
    assert out == "c2 slots=3\nc1 slots=2\nc3.cluster slots=1\n"
    code, out, _ = run(capsys, "--pbs", "--slots", "4")
    assert out == "c2 slots=4\nc1 slots=4\nc3.cluster slots=4\n"


def test_pbs_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert_user_error(*run(capsys, "--pbs")[::2], "PBS_NODEFILE is not set")
    monkeypatch.setenv("PBS_NODEFILE", str(tmp_path / "missing"))
    assert_user_error(*run(capsys, "--pbs")[::2], "cannot read PBS_NODEFILE")
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("PBS_NODEFILE", str(tmp_path / "empty"))
    assert_user_error(*run(capsys, "--pbs")[::2], "lists no hosts")


@pytest.mark.parametrize("var", ["PBS_NODEFILE", "LSB_DJOB_HOSTFILE"])
def test_scheduler_host_files_bom_and_binary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, var: str
) -> None:
    """A byte-order mark is not part of the first host; a binary file is a user error, not a traceback."""
    option = "--pbs" if var == "PBS_NODEFILE" else "--lsf"
    nodes = tmp_path / "nodes"
    nodes.write_bytes(b"\xef\xbb\xbfc1\r\nc1\r\nc2\r\nc2\r\n")
    monkeypatch.setenv(var, str(nodes))
    code, out, err = run(capsys, option)
    assert code == 0, err
    assert out == "c1 slots=2\nc2 slots=2\n"
    nodes.write_bytes(b"c1\n\xff\xfe\n")
    code, out, err = run(capsys, option)
    assert out == ""
    assert_user_error(code, err, f"cannot read {var}", "not UTF-8")


def test_lsf_hostfile_drops_batch_host(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    djob = tmp_path / "djob"
    djob.write_text("batch3\n" + "a01n01\n" * 42 + "a01n02\n" * 42)
    monkeypatch.setenv("LSB_DJOB_HOSTFILE", str(djob))
    monkeypatch.setenv("LSB_MCPU_HOSTS", "ignored 1")
    code, out, _ = run(capsys, "--lsf")
    assert code == 0
    assert out == "a01n01 slots=42\na01n02 slots=42\n"
    code, out, _ = run(capsys, "--lsf", "--slots", "6")
    assert out == "a01n01 slots=6\na01n02 slots=6\n"
    code, out, _ = run(capsys, "--lsf", "--keep-launch-host")
    assert out.splitlines()[0] == "batch3 slots=1"


def test_lsf_mcpu_hosts(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSB_MCPU_HOSTS", "login1 1 h1 4 h2 4")
    code, out, _ = run(capsys, "--lsf")
    assert code == 0
    assert out == "h1 slots=4\nh2 slots=4\n"


@pytest.mark.parametrize(
    ("mcpu", "expected"),
    [
        ("h1 4 h2 4", [Host("h1", 4), Host("h2", 4)]),  # plain LSF: the first host computes too
        ("h1 1 h2 1 h3 1", [Host("h1", 1), Host("h2", 1), Host("h3", 1)]),  # one slot each: nothing to drop
        ("batch1 1 h1 1", [Host("h1", 1)]),  # named like a batch node
        ("launch 1 h1 42 h2 42", [Host("h1", 42), Host("h2", 42)]),  # a lone single slot before full hosts
        ("h1 1", [Host("h1", 1)]),
    ],
)
def test_lsf_launch_host_heuristic(mcpu: str, expected: list[Host]) -> None:
    assert hf.hosts_from_lsf({"LSB_MCPU_HOSTS": mcpu}) == expected


def test_lsf_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert_user_error(*run(capsys, "--lsf")[::2], "no LSF job here")
    monkeypatch.setenv("LSB_MCPU_HOSTS", "h1 4 h2")
    assert_user_error(*run(capsys, "--lsf")[::2], "cannot parse LSB_MCPU_HOSTS")


# --- --from-list ---------------------------------------------------------------------------------


def test_from_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--from-list", "h1,h2:4,node[01-02]:8")
    assert code == 0
    assert out == "h1 slots=1\nh2 slots=4\nnode01 slots=8\nnode02 slots=8\n"
    code, out, _ = run(capsys, "--from-list", "h1,h2:4", "--slots", "2")
    assert out == "h1 slots=2\nh2 slots=4\n"


def test_from_list_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    listing = tmp_path / "hosts.txt"
    listing.write_text("# two racks\nr1n[1-2]:2\nr2n1  # spare\n")
    code, out, _ = run(capsys, "--from-list", str(listing))
    assert code == 0
    assert out == "r1n1 slots=2\nr1n2 slots=2\nr2n1 slots=1\n"
    deepspeed = tmp_path / "hostfile"
    deepspeed.write_text("worker-1 slots=4\nworker-2 slots=4\n")
    code, out, _ = run(capsys, "--from-list", str(deepspeed))
    assert out == deepspeed.read_text()


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("h1:x", "invalid host entry 'h1:x'"),
        (":4", "invalid host entry"),
        ("h1,h1:2", "appears twice"),
        ("n[2-1]", "runs backwards"),
        (",", "names no hosts"),
        ("h1:0", "at least 1"),
        ("h1:99999999999", "at most 4096"),
        ("h1:" + "9" * 5000, "invalid host entry"),
    ],
)
def test_from_list_errors(capsys: pytest.CaptureFixture[str], spec: str, fragment: str) -> None:
    assert_user_error(*run(capsys, "--from-list", spec)[::2], fragment)


def test_from_list_path_that_is_not_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing list file was read as one host named like the path, and written as a hostfile."""
    missing = str(tmp_path / "hosts.txt")
    code, out, err = run(capsys, "--from-list", missing, "-o", str(tmp_path / "hostfile"))
    assert out == ""
    assert_user_error(code, err, f"host list file {missing!r} does not exist")
    code, out, err = run(capsys, "--from-list", str(tmp_path))
    assert_user_error(code, err, "is a directory")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("digit", ["\u00b2", "\u0663"])  # superscript two; Arabic-Indic three
@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (("--from-list", "h1:{d}"), {}, "invalid host entry"),
        (("--lsf",), {"LSB_MCPU_HOSTS": "h1 4 h2 {d}"}, "cannot parse LSB_MCPU_HOSTS"),
        (("--slurm",), {"SLURM_JOB_NODELIST": "n1", "SLURM_GPUS_ON_NODE": "{d}"}, "SLURM_GPUS_ON_NODE"),
        (("--slurm",), {"SLURM_JOB_NODELIST": "n1", "SLURM_GPUS_PER_NODE": "gpu:{d}"}, "SLURM_GPUS_PER_NODE"),
    ],
)
def test_counts_are_ascii_digits_only(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    digit: str,
    args: tuple[str, ...],
    env: dict[str, str],
    fragment: str,
) -> None:
    """str.isdigit() accepts these, but int() rejects the first and misreads the second."""
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(d=digit))
    code, out, err = run(capsys, *(a.format(d=digit) for a in args))
    assert out == ""
    assert_user_error(code, err, fragment)


# --- argument errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "choose one host source"),
        (("--slurm", "--pbs"), "not --slurm and --pbs"),
        (("--from-list", "h1", "--slots", "0"), "slots must be at least 1, got 0"),
        (("--from-list", "h1", "--slots", "99999999999"), "slots must be at most 4096"),
        (("--from-list", "h1", "--keep-launch-host"), "only applies with --lsf"),
    ],
)
def test_argument_errors(capsys: pytest.CaptureFixture[str], args: tuple[str, ...], fragment: str) -> None:
    assert_user_error(*run(capsys, *args)[::2], fragment)


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "neox hostfile --slurm -o hostfile" in out


# --- -o: atomic writes ---------------------------------------------------------------------------


def test_output_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "hostfile"
    code, out, err = run(capsys, "--from-list", "a:2,b:2", "-o", str(target))
    assert code == 0
    assert out == ""
    assert "2 host(s), 4 slot(s)" in err
    assert target.read_text() == "a slots=2\nb slots=2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert hf.read_hostfile(target) == [Host("a", 2), Host("b", 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostfile"]


def test_output_replaces_and_keeps_mode(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "hostfile"
    target.write_text("old slots=1\n")
    target.chmod(0o600)
    inode = target.stat().st_ino
    assert run(capsys, "--from-list", "new", "--output", str(target))[0] == 0
    assert target.read_text() == "new slots=1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.stat().st_ino != inode  # replaced by rename, not rewritten in place


def test_failed_write_leaves_old_file_and_no_temp(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    target = tmp_path / "hostfile"
    target.write_text("old slots=1\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hf.os, "replace", broken_replace)
    code, _, err = run(capsys, "--from-list", "new", "-o", str(target))
    assert_user_error(code, err, "No space left on device")
    assert target.read_text() == "old slots=1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostfile"]


def test_output_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert_user_error(
        *run(capsys, "--from-list", "a", "-o", str(tmp_path / "nope" / "hf"))[::2], "does not exist"
    )
    assert_user_error(*run(capsys, "--from-list", "a", "-o", str(tmp_path))[::2], "cannot write")
    monkeypatch.chdir(tmp_path)  # `-o ''` is the current directory to Path; it used to fail with EBUSY
    assert_user_error(*run(capsys, "--from-list", "a", "-o", "")[::2], "cannot write '.': it is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- library: hostfiles and include/exclude ------------------------------------------------------


def test_read_hostfile(tmp_path: Path) -> None:
    path = tmp_path / "hostfile"
    path.write_text("# cluster\n\nworker-1 slots=4\n  worker-2   slots = 2  # half\n10.0.0.3 slots=8\n")
    assert hf.read_hostfile(path) == [Host("worker-1", 4), Host("worker-2", 2), Host("10.0.0.3", 8)]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a slots=1\nb\n", ":2: cannot parse 'b'"),
        ("a slots=1\nb slots=x\n", ":2: cannot parse"),
        ("a slots=1\n\na slots=2\n", ":3: host 'a' is already listed on line 1"),
        ("a slots=0\n", ":1: host 'a' has 0 slots"),
        ("a slots=99999999999\n", ":1: host 'a' has 99999999999 slots; at most 4096"),
        ("a slots=" + "9" * 5000 + "\n", ":1: cannot parse"),
        ("# nothing\n", "lists no hosts"),
    ],
)
def test_read_hostfile_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "hostfile"
    path.write_text(text)
    with pytest.raises(NeoxError) as info:
        hf.read_hostfile(path)
    assert fragment in info.value.message
    assert str(path) in info.value.message


def test_byte_order_mark_is_not_part_of_a_host_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Windows editors start UTF-8 files with U+FEFF; it must not end up in the first host's name."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_bytes(b"\xef\xbb\xbfworker-1 slots=4\r\nworker-2 slots=4\r\n")
    assert hf.read_hostfile(hostfile) == [Host("worker-1", 4), Host("worker-2", 4)]
    listing = tmp_path / "hosts.txt"
    listing.write_bytes(b"\xef\xbb\xbfr1n[1-2]:2\r\n")
    code, out, _ = run(capsys, "--from-list", str(listing))
    assert code == 0
    assert out == "r1n1 slots=2\nr1n2 slots=2\n"


def test_read_missing_hostfile(tmp_path: Path) -> None:
    with pytest.raises(NeoxError, match="does not exist"):
        hf.read_hostfile(tmp_path / "missing")


@pytest.mark.parametrize(
    ("name", "slots"), [("", 1), ("a b", 1), ("a#b", 1), ("a", 0), ("a", True), ("a", hf.MAX_SLOTS + 1)]
)
def test_host_validates(name: str, slots: int) -> None:
    with pytest.raises(NeoxError):
        Host(name, slots)


HOSTS = [Host("worker-0", 4), Host("worker-1", 4), Host("worker-2", 2)]


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (None, None, {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1, 2, 3], "worker-2": [0, 1]}),
        ("worker-1", None, {"worker-1": [0, 1, 2, 3]}),
        (
            "worker-2@worker-0:2,0",
            None,
            {"worker-0": [0, 2], "worker-2": [0, 1]},
        ),  # hostfile order, sorted slots
        ("worker-0:1@worker-0:0,1", None, {"worker-0": [0, 1]}),
        ("worker-0:1@worker-0", None, {"worker-0": [0, 1, 2, 3]}),
        (None, "worker-1", {"worker-0": [0, 1, 2, 3], "worker-2": [0, 1]}),
        (None, "worker-0:0,3@worker-2:0,1", {"worker-0": [1, 2], "worker-1": [0, 1, 2, 3]}),
        ("", "", {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1, 2, 3], "worker-2": [0, 1]}),
    ],
)
def test_filter_hosts(include: str | None, exclude: str | None, expected: dict[str, list[int]]) -> None:
    result = hf.filter_hosts(HOSTS, include, exclude)
    assert result == expected
    assert list(result) == list(expected)


@pytest.mark.parametrize(
    ("include", "exclude", "fragment"),
    [
        ("worker-0", "worker-1", "cannot be used together"),
        ("worker-9", None, "'worker-9' is not in the hostfile"),
        (None, "worker-9:0", "'worker-9' is not in the hostfile"),
        ("worker-2:2", None, "has no slot 2"),
        ("worker-0:a", None, "bad slot 'a'"),
        ("worker-0:", None, "bad slot ''"),
        ("worker-0@@worker-1", None, "empty entry"),
        ("worker-0:\u00b2", None, "bad slot"),  # a digit to str.isdigit(), not to int()
        (None, "worker-0:\u0663", "bad slot"),  # Arabic-Indic 3: no slot index in a hostfile's syntax
        (None, "worker-0@worker-1@worker-2", "no hosts are left"),
    ],
)
def test_filter_hosts_errors(include: str | None, exclude: str | None, fragment: str) -> None:
    with pytest.raises(NeoxError) as info:
        hf.filter_hosts(HOSTS, include, exclude)
    assert fragment in info.value.message


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    hosts = hf.hosts_from_slurm({"SLURM_JOB_NODELIST": "n[09-11]", "SLURM_TASKS_PER_NODE": "3,2(x2)"})
    hf.write_hostfile(hosts, tmp_path / "hf")
    assert hf.read_hostfile(tmp_path / "hf") == hosts == [Host("n09", 3), Host("n10", 2), Host("n11", 2)]


def test_from_list_ipv6_addresses_are_hosts() -> None:
    """``fe80::1`` is one host with the default slots, not host ``fe80:`` with 1 slot."""
    assert hf.hosts_from_list("fe80::1,10.0.0.2:4,::1", slots=2) == [
        Host("fe80::1", 2),
        Host("10.0.0.2", 4),
        Host("::1", 2),
    ]
