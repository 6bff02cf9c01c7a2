"""Unit tier for the launcher plugins: argv and environment of every plugin, hostile quoting, discovery.

Nothing here starts a daemon or a training: commands are built and inspected,
and where quoting matters the produced shell text is really run through
``sh`` with the rank replaced by a recorder that writes down what it received.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from neoxcli.cli import main
from neoxcli.config import load_config
from neoxcli.config.schema import NeoXConfig
from neoxcli.errors import NeoxError
from neoxcli.launchers import registry
from neoxcli.launchers.base import (
    AGENT_MODULE,
    WORKER_MODULE,
    LaunchCommand,
    LaunchPlan,
    Node,
    forwarded_env,
    select_nodes,
)
from neoxcli.launchers.hostfile import Host
from neoxcli.launchers.jsrun import JsrunLauncher
from neoxcli.launchers.local import LocalLauncher
from neoxcli.launchers.mpi import MpiLauncher, detect_flavor
from neoxcli.launchers.pdsh import PdshLauncher
from neoxcli.launchers.slurm import SlurmLauncher, render_template

PY = "/opt/py/bin/python"
RUN_CONFIG = Path("/runs/exp/run-config.yml")
WORKER = [PY, "-m", WORKER_MODULE, "--config", str(RUN_CONFIG)]
WRAPPED = [PY, "-m", AGENT_MODULE, "--", *WORKER]
# Values a shell would misread if any of them were interpolated unquoted.
HOSTILE = [
    "sp ace",
    "it's",
    'dq"uote',
    "semi;touch SENTINEL_A",
    "$(touch SENTINEL_B)",
    "`touch SENTINEL_C`",
    "pipe|touch SENTINEL_D",
    "amp&&touch SENTINEL_E",
    "new\nline; touch SENTINEL_F",
    "50% %h %n %%",
    "back\\slash $HOME ${HOME} !bang *glob ~tilde",
]
SCHEDULER_PREFIXES = ("SLURM_", "PBS_", "LSB_", "OMPI_", "PMI", "JSM_", "DLTS_", "PDSH_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any real scheduler environment (CI may itself run inside a job)."""
    for name in list(os.environ):
        if name.startswith(SCHEDULER_PREFIXES):
            monkeypatch.delenv(name)


def make_cfg(**launcher: Any) -> NeoXConfig:
    cfg = NeoXConfig()
    for key, value in launcher.items():
        setattr(cfg.launcher, key, value)
    return cfg


def nodes(*spec: tuple[str, int]) -> list[Node]:
    return [Node(name, tuple(range(slots))) for name, slots in spec]


BASE_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/root",
    "PYTHONPATH": "/src/a:/src/b",
    "NCCL_DEBUG": "INFO",
    "GLOO_SOCKET_IFNAME": "eth1",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "SECRET_TOKEN": "do-not-forward",
}


def env_pairs(argv: list[str], flag: str) -> dict[str, str]:
    """``-x K=V`` / ``-E K=V`` pairs of an argv as a dict."""
    return dict(argv[i + 1].split("=", 1) for i, word in enumerate(argv) if word == flag)


# --- plan rendering and host selection ---------------------------------------------------------


def test_render_quotes_every_word_and_keeps_comments_single_line() -> None:
    plan = LaunchPlan(
        "x",
        [LaunchCommand(["prog", "a b", "c'd"], {"K": "v w"}, label="rank 0\nrm -rf /")],
        files={Path("/tmp/we ird\nx"): "line1\nline2\n"},
        notes=["note\ninjected"],
        world_size=1,
    )
    text = plan.render()
    code_lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert code_lines == ["env 'K=v w' prog 'a b' 'c'\"'\"'d'"]
    assert shlex.split(code_lines[0]) == ["env", "K=v w", "prog", "a b", "c'd"]


def test_select_nodes_include_exclude_num_nodes_num_gpus() -> None:
    hosts = [Host("h1", 4), Host("h2", 4), Host("h3", 2)]
    assert select_nodes(hosts) == [Node("h1", (0, 1, 2, 3)), Node("h2", (0, 1, 2, 3)), Node("h3", (0, 1))]
    assert select_nodes(hosts, include="h2:1,3@h3") == [Node("h2", (1, 3)), Node("h3", (0, 1))]
    assert select_nodes(hosts, exclude="h1@h2:0") == [Node("h2", (1, 2, 3)), Node("h3", (0, 1))]
    assert select_nodes(hosts, num_nodes=2, num_gpus=2) == [Node("h1", (0, 1)), Node("h2", (0, 1))]
    with pytest.raises(NeoxError, match="only 3 host"):
        select_nodes(hosts, num_nodes=4)
    with pytest.raises(NeoxError, match="h3 have fewer slots"):
        select_nodes(hosts, num_gpus=4)


def test_forwarded_env_takes_what_ranks_need_only() -> None:
    fwd = forwarded_env(BASE_ENV)
    assert fwd == {"GLOO_SOCKET_IFNAME": "eth1", "NCCL_DEBUG": "INFO", "PYTHONPATH": "/src/a:/src/b"}


def test_launcher_env_last_and_names_checked() -> None:
    cfg = make_cfg(launcher_env={"NCCL_DEBUG": "WARN", "MY_VAR": "x y"})
    env = PdshLauncher(PY).rank_env(cfg, nodes(("h1", 2), ("h2", 2)), BASE_ENV)
    assert env["NCCL_DEBUG"] == "WARN" and env["MY_VAR"] == "x y"
    assert env["MASTER_ADDR"] == "h1" and env["MASTER_PORT"] == "29500" and env["WORLD_SIZE"] == "4"
    assert int(env["OMP_NUM_THREADS"]) >= 1
    assert "SECRET_TOKEN" not in env and "CUDA_VISIBLE_DEVICES" not in env
    with pytest.raises(NeoxError, match="invalid variable name"):
        PdshLauncher(PY).rank_env(make_cfg(launcher_env={"A;B": "1"}), nodes(("h1", 1)), {})


def test_omp_threads_from_environment_wins() -> None:
    env = PdshLauncher(PY).rank_env(make_cfg(), nodes(("h1", 2)), {"OMP_NUM_THREADS": "7"})
    assert env["OMP_NUM_THREADS"] == "7"


# --- local -------------------------------------------------------------------------------------


def test_local_two_ranks_torchrun_style() -> None:
    cfg = make_cfg(num_gpus=2, master_port=29511)
    launcher = LocalLauncher(PY)
    hosts = launcher.resolve_hosts(cfg, {})
    assert hosts == [Node("localhost", (0, 1))]
    plan = launcher.build(cfg, hosts, RUN_CONFIG, {"PYTHONPATH": "/src"})
    assert plan.world_size == 2 and len(plan.commands) == 2
    for rank, command in enumerate(plan.commands):
        assert command.argv == WORKER
        assert command.label == f"rank {rank} on localhost"
        env = command.env
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == (
            str(rank),
            str(rank),
            "2",
            "2",
        )
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "29511")
        assert env["GLOO_SOCKET_IFNAME"] == "lo" and env["PYTHONPATH"] == "/src"
        assert env["OMP_NUM_THREADS"] == str(max((os.cpu_count() or 1) // 2, 1))
        assert "CUDA_VISIBLE_DEVICES" not in env


def test_local_free_port_when_unset_and_include_sets_device_mask() -> None:
    cfg = make_cfg(num_gpus=4, include="localhost:1,3")
    launcher = LocalLauncher(PY)
    hosts = launcher.resolve_hosts(cfg, {})
    assert hosts == [Node("localhost", (1, 3))]
    plan = launcher.build(cfg, hosts, RUN_CONFIG, {})
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in plan.commands] == ["1,3", "1,3"]
    assert plan.commands[0].env["MASTER_PORT"] != "29500"


def test_local_ignores_hostfile(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("far slots=8\n")
    hosts = LocalLauncher(PY).resolve_hosts(make_cfg(hostfile=str(hostfile), num_gpus=2), {})
    assert hosts == [Node("localhost", (0, 1))]


# --- pdsh --------------------------------------------------------------------------------------


def pdsh_substitute(command: str, host: str, index: int) -> str:
    """What pdsh does to the remote command: %h, %n, %u filled in, %% made %."""
    out, i = [], 0
    while i < len(command):
        if command[i] == "%" and i + 1 < len(command):
            nxt = command[i + 1]
            out.append({"%": "%", "h": host, "n": str(index), "u": "root"}.get(nxt, "%" + nxt))
            i += 2
        else:
            out.append(command[i])
            i += 1
    return "".join(out)


def test_pdsh_argv_and_remote_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(ssh_port=2222, launcher_env={"MY_VAR": "1"}, launcher_args=["-u", "600"])
    hosts = nodes(("node01", 2), ("node02", 2))
    plan = PdshLauncher(PY).build(cfg, hosts, RUN_CONFIG, {**BASE_ENV, "PDSH_SSH_ARGS_APPEND": "-q"})
    (command,) = plan.commands
    assert command.argv[:8] == ["pdsh", "-S", "-f", "1024", "-w", "node01,node02", "-u", "600"]
    assert command.env == {"PDSH_RCMD_TYPE": "ssh", "PDSH_SSH_ARGS_APPEND": "-q -p 2222"}
    assert plan.world_size == 4
    words = shlex.split(pdsh_substitute(command.argv[-1], "node02", 1))
    assert words[:5] == ["cd", str(tmp_path), "&&", "exec", "env"]
    cut = words.index(PY)
    env = dict(word.split("=", 1) for word in words[5:cut])
    assert env["MASTER_ADDR"] == "node01" and env["WORLD_SIZE"] == "4" and env["MY_VAR"] == "1"
    assert env["PYTHONPATH"] == "/src/a:/src/b" and env["NCCL_DEBUG"] == "INFO"
    assert env["GLOO_SOCKET_IFNAME"] == "eth1" and "OMP_NUM_THREADS" in env
    assert words[cut:] == [
        PY,
        "-m",
        AGENT_MODULE,
        "--node",
        "node01=0,1",
        "--node",
        "node02=0,1",
        "--host",
        "node02",
        "--",
        *WORKER,
    ]


@pytest.mark.skipif(shutil.which("grep") is None, reason="grep is not installed")
def test_pdsh_stop_command_reaches_only_this_jobs_agents(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ssh forwards no signal: the plan carries a pdsh command that sends SIGUSR1 to this job's agents."""
    monkeypatch.chdir(tmp_path)
    run_config = tmp_path / "exp (v1.5)+[a]^$ 50%" / "run-config.yml"  # regex and pdsh specials
    hosts = nodes(("node01", 1), ("node02", 1))
    plan = PdshLauncher(PY).build(make_cfg(launcher_args=["-u", "600"]), hosts, run_config, BASE_ENV)
    (command,) = plan.commands
    stop = command.stop_argv
    assert stop is not None and stop[:8] == ["pdsh", "-S", "-f", "1024", "-w", "node01,node02", "-u", "600"]
    kill, signal_flag, full, pattern = shlex.split(pdsh_substitute(stop[-1], "node02", 1))
    assert (kill, signal_flag, full) == ("pkill", "-USR1", "-f")

    def cmdline(remote: str) -> str:  # what /proc shows for the process the remote command execs
        words = shlex.split(pdsh_substitute(remote, "node02", 1))
        return " ".join(words[words.index(PY) :])

    agent = cmdline(command.argv[-1])
    other_job = cmdline(
        PdshLauncher(PY).build(make_cfg(), hosts, tmp_path / "run-config.yml", BASE_ENV).commands[0].argv[-1]
    )
    worker = " ".join([PY, "-m", WORKER_MODULE, "--config", str(run_config)])
    carriers = [  # mention the agent's words too; SIGUSR1 would end them
        "ssh -oBatchMode=yes node02 " + pdsh_substitute(command.argv[-1], "node02", 1),
        " ".join(command.argv),
        " ".join(stop),
    ]
    lines = [agent, other_job, worker, *carriers]
    found = subprocess.run(
        ["grep", "-E", "-n", "--", pattern], input="\n".join(lines) + "\n", capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    assert [line.split(":", 1)[0] for line in found.stdout.splitlines()] == ["1"]  # the agent alone
    said = plan.render().splitlines()[-1]  # --dry-run shows it, as a comment: pasting the plan never runs it
    assert (
        said.startswith("# the first SIGTERM, SIGUSR1 or Ctrl-C is passed on by: pdsh -S") and "pkill" in said
    )


def test_pdsh_exclude_and_hostfile(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node01 slots=2\nnode02 slots=2\nnode03 slots=2\n")
    cfg = make_cfg(hostfile=str(hostfile), exclude="node02@node03:0")
    launcher = PdshLauncher(PY)
    hosts = launcher.resolve_hosts(cfg, {})
    assert hosts == [Node("node01", (0, 1)), Node("node03", (1,))]
    plan = launcher.build(cfg, hosts, RUN_CONFIG, {})
    assert plan.commands[0].argv[5] == "node01,node03"
    assert "--node node01=0,1 --node node03=1 --host %h" in plan.commands[0].argv[-1]


def test_pdsh_hostfile_from_dlts_env(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=1\nb slots=1\n")
    hosts = PdshLauncher(PY).resolve_hosts(make_cfg(), {"DLTS_HOSTFILE": str(hostfile)})
    assert [h.name for h in hosts] == ["a", "b"]


def test_pdsh_needs_hosts() -> None:
    if os.path.isfile("/job/hostfile"):
        pytest.skip("/job/hostfile exists here")
    with pytest.raises(NeoxError, match="needs a hostfile"):
        PdshLauncher(PY).resolve_hosts(make_cfg(), {})


@pytest.mark.parametrize(
    "name", ["-oProxyCommand=touch_x", "a;b", "$(touch_x)", "h,i", "h[1-2]", "a%h", "`x`", "a'b", "a|b"]
)
@pytest.mark.parametrize("launcher", [PdshLauncher, MpiLauncher, SlurmLauncher])
def test_hostile_host_names_are_refused(name: str, launcher: type) -> None:
    cfg = make_cfg(mpi_flavor="openmpi")
    with pytest.raises(NeoxError, match="cannot be used"):
        launcher(PY).build(cfg, nodes(("good", 1), (name, 1)), RUN_CONFIG, {})


def write_recorder(directory: Path) -> Path:
    """An executable that stands in for the Python interpreter and records what it was given."""
    record = directory / "record.json"
    path = directory / "fake-python"
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ), 'cwd': os.getcwd()}) + '\\n')\n"
    )
    path.chmod(0o755)
    return path


def read_records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / "record.json").read_text().splitlines()]


def hostile_setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A hostile working directory and run-config path, and hostile launcher_env values."""
    workdir = tmp_path / "work dir; touch SENTINEL_W $(touch SENTINEL_X) 'q\" %h"
    workdir.mkdir()
    run_config = workdir / "run $(touch SENTINEL_Y);`touch SENTINEL_Z`" / "run-config.yml"
    values = {f"HOSTILE_{i}": value for i, value in enumerate(HOSTILE)}
    return workdir, run_config, values


def assert_no_sentinels(*dirs: Path) -> None:
    for directory in dirs:
        found = [p for p in directory.rglob("SENTINEL*")]
        assert not found, found


def test_pdsh_remote_command_is_injection_proof(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    workdir, run_config, values = hostile_setup(tmp_path)
    monkeypatch.chdir(workdir)
    fake = write_recorder(tmp_path)
    cfg = make_cfg(launcher_env=values)
    plan = PdshLauncher(str(fake)).build(cfg, nodes(("node01", 1), ("node02", 1)), run_config, {})
    remote = plan.commands[0].argv[-1]
    script = pdsh_substitute(remote, "node02", 1)
    result = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    (record,) = read_records(tmp_path)
    assert record["cwd"] == str(workdir)
    for key, value in values.items():
        assert record["env"][key] == value
    assert record["argv"] == [
        "-m",
        AGENT_MODULE,
        "--node",
        "node01=0",
        "--node",
        "node02=0",
        "--host",
        "node02",
        "--",
        str(fake),
        "-m",
        WORKER_MODULE,
        "--config",
        str(run_config),
    ]
    assert_no_sentinels(tmp_path, Path.cwd())


@pytest.mark.skipif(shutil.which("pdsh") is None, reason="pdsh is not installed")
def test_pdsh_real_substitution_is_injection_proof(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same through pdsh itself (its exec module runs the command here, with its own % rules)."""
    workdir, run_config, values = hostile_setup(tmp_path)
    monkeypatch.chdir(workdir)
    fake = write_recorder(tmp_path)
    plan = PdshLauncher(str(fake)).build(
        make_cfg(launcher_env=values), nodes(("node01", 1), ("node02", 1)), run_config, {}
    )
    argv = plan.commands[0].argv
    real = ["pdsh", "-R", "exec", *argv[1:-1], "sh", "-c", argv[-1]]
    result = subprocess.run(real, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    records = sorted(read_records(tmp_path), key=lambda r: r["argv"][7])
    assert [r["argv"][7] for r in records] == ["node01", "node02"]
    for record in records:
        assert {k: record["env"][k] for k in values} == values
        assert record["argv"][-1] == str(run_config) and record["cwd"] == str(workdir)
    assert_no_sentinels(tmp_path)


# --- slurm -------------------------------------------------------------------------------------

SLURM_JOB = {"SLURM_JOB_NODELIST": "node[01-02]", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_ID": "7"}


def test_slurm_srun_inside_allocation() -> None:
    launcher = SlurmLauncher(PY)
    cfg = make_cfg(launcher_env={"A": "b,c d"}, launcher_args=["--mpi=none"])
    hosts = launcher.resolve_hosts(cfg, SLURM_JOB)
    assert hosts == nodes(("node01", 2), ("node02", 2))
    plan = launcher.build(cfg, hosts, RUN_CONFIG, {**BASE_ENV, **SLURM_JOB})
    (command,) = plan.commands
    argv = command.argv
    assert argv[:5] == ["srun", "--nodes=2", "--ntasks=4", "--ntasks-per-node=2", "--kill-on-bad-exit=1"]
    export = argv[5]
    assert export.startswith("--export=ALL,") and set(command.env) == set(
        export.split("=", 1)[1].split(",")[1:]
    )
    assert argv[6:] == ["--nodelist=node[01-02]", "--mpi=none", *WRAPPED]
    assert command.env["MASTER_ADDR"] == "node01" and command.env["A"] == "b,c d"
    assert command.env["PYTHONPATH"] == "/src/a:/src/b"


def test_slurm_num_gpus_and_exclude_in_allocation() -> None:
    cfg = make_cfg(num_gpus=1, exclude="node01")
    hosts = SlurmLauncher(PY).resolve_hosts(cfg, SLURM_JOB)
    assert hosts == nodes(("node02", 1))
    argv = SlurmLauncher(PY).build(cfg, hosts, RUN_CONFIG, {}).commands[0].argv
    assert "--nodes=1" in argv and "--ntasks=1" in argv and "--nodelist=node02" in argv


@pytest.mark.parametrize("num_gpus", [0, -1])
def test_num_gpus_zero_or_negative_means_every_slot_in_an_allocation(num_gpus: int) -> None:
    """As with a hostfile (and in DeepSpeed); it used to fail with 'pass --slots N', a `neox hostfile` flag."""
    cfg = make_cfg(num_gpus=num_gpus)
    assert SlurmLauncher(PY).resolve_hosts(cfg, SLURM_JOB) == nodes(("node01", 2), ("node02", 2))
    lsf = {"LSB_MCPU_HOSTS": "batch1 1 node1 42 node2 42"}
    assert JsrunLauncher(PY).resolve_hosts(cfg, lsf) == nodes(("node1", 42), ("node2", 42))


def test_slurm_without_allocation_lets_slurm_pick() -> None:
    cfg = make_cfg(num_nodes=3, num_gpus=2)
    launcher = SlurmLauncher(PY)
    hosts = launcher.resolve_hosts(cfg, {})
    plan = launcher.build(cfg, hosts, RUN_CONFIG, {})
    argv = plan.commands[0].argv
    assert argv[1:4] == ["--nodes=3", "--ntasks=6", "--ntasks-per-node=2"]
    assert not any(a.startswith("--nodelist") for a in argv)
    assert "MASTER_ADDR" not in plan.commands[0].env
    assert any("node agent" in note for note in plan.notes)


def test_slurm_uneven_slots_refused(tmp_path: Path) -> None:
    with pytest.raises(NeoxError, match="slots differ"):
        SlurmLauncher(PY).build(make_cfg(), nodes(("a", 2), ("b", 1)), RUN_CONFIG, {})


def test_sbatch_plan_and_script_run_through_sh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    workdir, run_config, values = hostile_setup(tmp_path)
    monkeypatch.chdir(workdir)
    cfg = make_cfg(sbatch=True, num_nodes=2, num_gpus=1, launcher_env=values, sbatch_args=["--time=5"])
    launcher = SlurmLauncher(PY)
    plan = launcher.build(cfg, launcher.resolve_hosts(cfg, {}), run_config, {})
    (command,) = plan.commands
    script_path = run_config.parent / "neox.sbatch"
    assert command.argv == [
        "sbatch",
        "--parsable",
        "--job-name=neox",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--output=" + str(run_config.parent).replace("%", "%%") + "/slurm-%j.out",
        "--time=5",
        str(script_path),
    ]
    script = plan.files[script_path]
    assert "{{" not in script
    # Run the script with srun replaced by a recorder: every value arrives intact, nothing injected.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = write_recorder(tmp_path)
    (bindir / "srun").symlink_to(fake)
    script_file = tmp_path / "job.sh"
    script_file.write_text(script)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n[1-2]"}
    result = subprocess.run(["sh", str(script_file)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "neox: job 42 on n[1-2]" in result.stdout
    (record,) = read_records(tmp_path)
    assert record["cwd"] == str(workdir)
    assert {k: record["env"][k] for k in values} == values
    assert record["argv"][:4] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert record["argv"][-1] == str(run_config)
    assert_no_sentinels(tmp_path)


def test_sbatch_output_pattern_keeps_percent_signs_of_the_run_directory(tmp_path: Path) -> None:
    """sbatch expands %x (job name), %j, %u... anywhere in --output; the run directory's own % must stay."""
    run_config = tmp_path / "lr 50%x %j %5u" / "run-config.yml"
    cfg = make_cfg(sbatch=True)
    launcher = SlurmLauncher(PY)
    plan = launcher.build(cfg, launcher.resolve_hosts(cfg, {}), run_config, {})
    (output,) = [a for a in plan.commands[0].argv if a.startswith("--output=")]
    assert output == f"--output={tmp_path}/lr 50%%x %%j %%5u/slurm-%j.out"
    assert f"job output: {run_config.parent}/slurm-<jobid>.out" in plan.notes


def test_sbatch_submission_prints_job_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/sbatch-args\necho '4242;cluster'\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    cfg = make_cfg(sbatch=True)
    run_config = tmp_path / "run" / "run-config.yml"
    launcher = SlurmLauncher(PY)
    plan = launcher.build(cfg, launcher.resolve_hosts(cfg, {}), run_config, {})
    assert launcher.run(plan) == 0
    out = capsys.readouterr().out
    assert f"submitted batch job 4242: script {run_config.parent / 'neox.sbatch'}" in out
    assert (run_config.parent / "neox.sbatch").read_text().startswith("#!/bin/sh")
    assert (tmp_path / "sbatch-args").read_text().split()[-1] == str(run_config.parent / "neox.sbatch")


def test_sbatch_template_errors(tmp_path: Path) -> None:
    with pytest.raises(NeoxError, match="unknown placeholder"):
        render_template("{{ srun }}\n{{ nope }}\n", {"srun": "x"})
    with pytest.raises(NeoxError, match="no {{ srun }}"):
        render_template("#!/bin/sh\n", {"srun": "x"})
    custom = tmp_path / "my.sbatch"
    custom.write_text("#!/bin/bash\n#SBATCH --partition=gpu\n{{ exports }}\ncd {{ workdir }}\n{{srun}}\n")
    cfg = make_cfg(sbatch=True, sbatch_template=str(custom))
    plan = SlurmLauncher(PY).build(cfg, nodes(("n1", 1)), tmp_path / "r" / "run-config.yml", {})
    script = next(iter(plan.files.values()))
    assert script.startswith("#!/bin/bash\n#SBATCH --partition=gpu\nexport ")
    missing = make_cfg(sbatch=True, sbatch_template=str(tmp_path / "absent"))
    with pytest.raises(NeoxError, match="cannot read the sbatch template"):
        SlurmLauncher(PY).build(missing, nodes(("n1", 1)), RUN_CONFIG, {})


# --- mpi ---------------------------------------------------------------------------------------


def test_openmpi_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    cfg = make_cfg(
        mpi_flavor="openmpi",
        launcher_args=["--mca", "btl_tcp_if_include", "eth1"],
        launcher_env={"V": "x y=z"},
    )
    plan = MpiLauncher(PY).build(cfg, nodes(("10.0.0.1", 2), ("10.0.0.2", 2)), RUN_CONFIG, BASE_ENV)
    argv = plan.commands[0].argv
    hostfile = RUN_CONFIG.parent / "mpi-hostfile"
    assert argv[:9] == [
        "mpirun",
        "-np",
        "4",
        "--hostfile",
        str(hostfile),
        "--map-by",
        "slot",
        "--bind-to",
        "none",
    ]
    assert "--allow-run-as-root" in argv
    exported = env_pairs(argv, "-x")
    assert exported["MASTER_ADDR"] == "10.0.0.1" and exported["V"] == "x y=z"
    assert exported["PYTHONPATH"] == "/src/a:/src/b" and exported["NCCL_DEBUG"] == "INFO"
    assert "OMP_NUM_THREADS" in exported and "RANK" not in exported
    assert argv[-len(WRAPPED) - 3 :] == ["--mca", "btl_tcp_if_include", "eth1", *WRAPPED]
    assert plan.files == {hostfile: "10.0.0.1 slots=2\n10.0.0.2 slots=2\n"}


def test_openmpi_ssh_port() -> None:
    cfg = make_cfg(mpi_flavor="openmpi", ssh_port=2222)
    argv = MpiLauncher(PY).build(cfg, nodes(("a", 1)), RUN_CONFIG, {}).commands[0].argv
    i = argv.index("plm_rsh_args")
    assert argv[i - 1 : i + 2] == ["--mca", "plm_rsh_args", "-p 2222"]


def test_openmpi_not_root_has_no_root_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    plan = MpiLauncher(PY).build(make_cfg(mpi_flavor="openmpi"), nodes(("a", 1)), RUN_CONFIG, {})
    assert "--allow-run-as-root" not in plan.commands[0].argv


@pytest.mark.parametrize("flavor", ["mpich", "mvapich", "intel"])
def test_hydra_flavours(flavor: str) -> None:
    cfg = make_cfg(mpi_flavor=flavor, launcher_env={"V": "x y"})
    plan = MpiLauncher(PY).build(cfg, nodes(("a", 2), ("b", 2)), RUN_CONFIG, {})
    argv = plan.commands[0].argv
    hostfile = RUN_CONFIG.parent / "mpi-hostfile"
    assert argv[:7] == ["mpirun", "-n", "4", "-ppn", "2", "-f", str(hostfile)]
    genv = {argv[i + 1]: argv[i + 2] for i, w in enumerate(argv) if w == "-genv"}
    assert genv["V"] == "x y" and genv["MASTER_ADDR"] == "a" and genv["WORLD_SIZE"] == "4"
    assert plan.files[hostfile] == "a:2\nb:2\n"
    assert argv[-len(WRAPPED) :] == WRAPPED and "-x" not in argv


def test_mpi_flavour_detection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "mpirun"
    for text, expected in [
        ("mpirun (Open MPI) 4.1.4", "openmpi"),
        ("HYDRA build details:\n    Version: 4.0", "mpich"),
        ("Intel(R) MPI Library for Linux* OS, Version 2021.9", "intel"),
        ("HYDRA build details: MVAPICH2 2.3.7", "mvapich"),
        ("something else", None),
    ]:
        fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}\nEOF\n")
        fake.chmod(0o755)
        assert detect_flavor(str(fake)) == expected
    assert detect_flavor(str(tmp_path / "absent")) is None
    monkeypatch.setenv("PATH", str(tmp_path))
    fake.write_text("#!/bin/sh\necho 'HYDRA build details'\n")
    plan = MpiLauncher(PY).build(make_cfg(), nodes(("a", 1)), RUN_CONFIG, {})
    assert plan.commands[0].argv[1] == "-n"


def test_mpi_refuses_slot_subsets() -> None:
    with pytest.raises(NeoxError, match="particular slots"):
        MpiLauncher(PY).build(make_cfg(mpi_flavor="openmpi"), [Node("a", (1,))], RUN_CONFIG, {})


# --- jsrun -------------------------------------------------------------------------------------


def test_jsrun_from_lsf_environment() -> None:
    env = {"LSB_MCPU_HOSTS": "batch1 1 node1 42 node2 42"}
    cfg = make_cfg(num_gpus=6, launcher_env={"V": "a b"}, launcher_args=["--smpiargs=-disable_gpu_hooks"])
    launcher = JsrunLauncher(PY)
    hosts = launcher.resolve_hosts(cfg, env)
    assert hosts == nodes(("node1", 6), ("node2", 6))
    plan = launcher.build(cfg, hosts, RUN_CONFIG, {**BASE_ENV, **env})
    argv = plan.commands[0].argv
    assert argv[:13] == [
        "jsrun",
        "-n",
        "2",
        "-r",
        "1",
        "-a",
        "6",
        "-c",
        "ALL_CPUS",
        "-g",
        "ALL_GPUS",
        "-b",
        "none",
    ]
    exported = env_pairs(argv, "-E")
    assert exported["MASTER_ADDR"] == "node1" and exported["WORLD_SIZE"] == "12" and exported["V"] == "a b"
    assert argv[-len(WRAPPED) - 1 :] == ["--smpiargs=-disable_gpu_hooks", *WRAPPED]
    assert plan.world_size == 12


# --- discovery and the command line -------------------------------------------------------------

PLUGIN_SOURCE = """
from neoxcli.launchers.base import LaunchCommand, Launcher, LaunchPlan


class TeamLauncher(Launcher):
    name = "teamrun"

    def default_hosts(self, config, env):
        from neoxcli.launchers.hostfile import Host
        return [Host("teamhost", 3)]

    def build(self, config, hosts, run_config_path, env):
        argv = ["teamrun", "--ranks", str(sum(h.slots for h in hosts)), *self.worker_argv(run_config_path)]
        return LaunchPlan(self.name, [LaunchCommand(argv, self.rank_env(config, hosts, env))], world_size=3)
"""


def install_fake_dist(
    root: Path, name: str, entry_points: Mapping[str, str], module: str | None = None
) -> None:
    """A minimal installed distribution (dist-info with entry_points.txt) under ``root``."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[neoxcli.launchers]\n{lines}")
    if module is not None:
        (root / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(module))


def test_builtins_are_registered() -> None:
    assert {"local", "pdsh", "slurm", "mpi", "jsrun"} <= set(registry.available())
    for name in ("local", "pdsh", "slurm", "mpi", "jsrun"):
        assert registry.get_launcher(name).name == name


def test_unknown_launcher_lists_available() -> None:
    with pytest.raises(NeoxError, match="unknown launcher 'nope'") as info:
        registry.get_launcher("nope")
    assert info.value.hint is not None and "jsrun, local, mpi, pdsh, slurm" in info.value.hint
    assert "did you mean" not in info.value.hint


@pytest.mark.parametrize(
    ("typed", "meant"), [("SLURM", "slurm"), ("slrum", "slurm"), ("Pdsh", "pdsh"), ("jsrn", "jsrun")]
)
def test_unknown_launcher_suggests_the_close_one(typed: str, meant: str) -> None:
    with pytest.raises(NeoxError, match=f"unknown launcher {typed!r}") as info:
        registry.get_launcher(typed)
    assert info.value.hint is not None and info.value.hint.startswith(f"did you mean {meant!r}? available")


def test_third_party_plugin_discovered_and_dry_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_fake_dist(tmp_path, "team-neox", {"teamrun": "team_neox:TeamLauncher"}, PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "teamrun" in registry.available()
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text(f"launcher: teamrun\nsave: {tmp_path / 'run'}\n")
    code = main(["train", str(cfg_file), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if "teamrun --ranks 3" in line)
    assert line.endswith(
        shlex.join(
            [sys.executable, "-m", WORKER_MODULE, "--config", str(tmp_path / "run" / "run-config.yml")]
        )
    )
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_plugin_conflicts_and_load_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install_fake_dist(tmp_path, "other-slurm", {"slurm": "other_slurm:X", "broken": "no_such_module_xyz:Y"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NeoxError, match="registered more than once"):
        registry.get_launcher("slurm")
    with pytest.raises(NeoxError, match="failed to load"):
        registry.get_launcher("broken")


def test_cli_dry_run_prints_exact_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hosts").write_text("node01 slots=1\nnode02 slots=1\n")
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text(f'save: {tmp_path / "run"}\nlauncher_env:\n  WEIRD: "a b; $(touch SENTINEL)"\n')
    code = main(["train", str(cfg_file), "--launcher", "pdsh", "--hostfile", "hosts", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if not line.startswith("#")]
    words = shlex.split(line)
    assert words[:7] == ["env", "PDSH_RCMD_TYPE=ssh", "pdsh", "-S", "-f", "1024", "-w"]
    assert "WEIRD=a b; $(touch SENTINEL)" in shlex.split(pdsh_substitute(words[-1], "node01", 0))
    assert not (tmp_path / "run").exists()
    code = main(["train", str(cfg_file), "--launcher", "local", "--dry-run"])
    assert code == 0 and "in-process: 1 rank" in capsys.readouterr().out
    code = main(["train", str(cfg_file), "--launcher", "slurm", "--sbatch", "--dry-run", "--num-gpus", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "sbatch --parsable" in out and "#   srun --nodes=1 --ntasks=2" in out
    assert_no_sentinels(tmp_path)


def test_cli_unknown_launcher_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text("train_iters: 1\n")
    code = main(["train", str(cfg_file), "--launcher", "nope", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown launcher 'nope'" in err and "Traceback" not in err


def test_load_config_accepts_launcher_keys(tmp_path: Path) -> None:
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text("mpi_flavor: intel\nsbatch: true\nsbatch_args: ['--time=10']\nssh_port: 2222\n")
    cfg = load_config([cfg_file])
    assert (
        cfg.launcher.mpi_flavor == "intel"
        and cfg.launcher.sbatch
        and cfg.launcher.sbatch_args == ["--time=10"]
    )


@pytest.mark.parametrize(
    ("launcher", "override"),
    [
        ("local", "num_gpus=99999999999"),
        ("slurm", "num_gpus=99999999999"),  # no allocation: Slurm-picked placeholders
        ("slurm", "num_nodes=99999999999"),
    ],
)
def test_huge_counts_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], launcher: str, override: str
) -> None:
    """Once a plan of 10**11 ranks or nodes was built in memory (MemoryError, or the OOM killer)."""
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text("train_iters: 1\n")
    code = main(["train", str(cfg_file), "--launcher", launcher, "--set", override, "--dry-run"])
    err = capsys.readouterr().err
    key = override.split("=")[0]
    assert code == 2 and f"launcher.{key}: must be <=" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("master_port=70000", "launcher.master_port: must be <= 65535"),
        ("master_port=0", "launcher.master_port: must be >= 1"),
        ("master_port=-1", "launcher.master_port: must be >= 1"),
        ("ssh_port=0", "launcher.ssh_port: must be >= 1"),
        ("ssh_port=65536", "launcher.ssh_port: must be <= 65535"),
    ],
)
def test_ports_out_of_range_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, problem: str
) -> None:
    """Once printed as MASTER_PORT=70000 or ssh -p 0, to fail only on the hosts."""
    (tmp_path / "hosts").write_text("node1 slots=1\nnode2 slots=1\n")
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text("train_iters: 1\n")
    argv = ["train", str(cfg_file), "--launcher", "pdsh", "--hostfile", str(tmp_path / "hosts")]
    code = main([*argv, "--set", override, "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2 and problem in err and "Traceback" not in err and out == ""


def test_config_bounds_match_the_hostfile_limits() -> None:
    from neoxcli.config.schema import LauncherConfig
    from neoxcli.launchers.hostfile import MAX_SLOTS
    from neoxcli.launchers.hostlist import MAX_HOSTS

    def upper(name: str) -> int:
        (bound,) = [m.le for m in LauncherConfig.model_fields[name].metadata if hasattr(m, "le")]
        return int(bound)

    assert upper("num_gpus") == MAX_SLOTS and upper("num_nodes") == MAX_HOSTS


def test_missing_launcher_program_is_a_user_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    (tmp_path / "hosts").write_text("node01 slots=1\n")
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text(f"save: {tmp_path / 'run'}\n")
    code = main(["train", str(cfg_file), "--launcher", "pdsh", "--hostfile", str(tmp_path / "hosts")])
    err = capsys.readouterr().err
    assert code == 2 and "`pdsh` is not on PATH" in err and "--dry-run" in err
    assert not (tmp_path / "run").exists()


def test_local_default_ranks_without_gpus_fill_one_model_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """No num_gpus: one rank per GPU; on a CPU machine as many ranks as TP x PP needs."""
    from neoxcli.launchers import local
    from neoxcli.launchers.local import LocalLauncher

    cfg = NeoXConfig()
    cfg.parallel.model_parallel_size, cfg.parallel.pipe_parallel_size = 2, 2
    monkeypatch.setattr(local, "local_device_count", lambda: 0)
    assert LocalLauncher().default_hosts(cfg, {}) == [Host("localhost", 4)]
    assert LocalLauncher().default_hosts(NeoXConfig(), {}) == [Host("localhost", 1)]
    monkeypatch.setattr(local, "local_device_count", lambda: 8)
    assert LocalLauncher().default_hosts(cfg, {}) == [Host("localhost", 8)]
    cfg.launcher.num_gpus = 2
    assert LocalLauncher().default_hosts(cfg, {}) == [Host("localhost", 2)]


def test_sbatch_output_pattern_keeps_the_run_directory() -> None:
    """sbatch expands %x in the whole --output path, and a backslash turns all expansion off."""
    from neoxcli.launchers.slurm import filename_pattern

    assert filename_pattern(Path("/runs/50%x"), "slurm-%j.out") == "/runs/50%%x/slurm-%j.out"
    assert filename_pattern(Path("/runs/a\\b%x"), "slurm-%j.out") == "/runs/a\\b%x/slurm.out"
