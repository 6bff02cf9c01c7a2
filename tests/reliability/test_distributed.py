"""Reliability of distributed launches: credentials stay private, frozen ranks end the job, failures are short.

Credentials: for every launcher, a variable named like a credential
(``HF_TOKEN``, and ``WANDB_API_KEY`` from ``launcher_env``) must reach the rank
while its value appears in no command line, no ``--dry-run`` output and no
file other than pdsh's 0600 env file. Ranks are stand-in interpreters that
record what they were given; mpirun is the real one where it is installed,
jsrun the fake in tests/fake_bin, srun and sbatch recorders.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from neoxcli.config.schema import NeoXConfig
from neoxcli.launchers.base import LaunchPlan, Node
from neoxcli.launchers.jsrun import JsrunLauncher
from neoxcli.launchers.local import LocalLauncher
from neoxcli.launchers.mpi import MpiLauncher
from neoxcli.launchers.pdsh import PdshLauncher
from neoxcli.launchers.slurm import SlurmLauncher
from neoxcli.launchers.supervisor import supervise

FAKE_BIN = Path(__file__).parents[1] / "fake_bin"
TOKEN = "hf_do-not-print-4f1c9e"
API_KEY = "wandb-do-not-print-77ab"
SCHEDULER_PREFIXES = ("SLURM_", "PBS_", "LSB_", "OMPI_", "PMI", "JSM_", "DLTS_", "PDSH_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(SCHEDULER_PREFIXES):
            monkeypatch.delenv(name)


def write_recorder(directory: Path, name: str = "fake-python") -> Path:
    """An executable standing in for Python (or srun): appends its argv and environment to record.json."""
    path = directory / name
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(directory / 'record.json')!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}) + '\\n')\n"
    )
    path.chmod(0o755)
    return path


def records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / "record.json").read_text().splitlines()]


def pdsh_substitute(command: str, host: str) -> str:
    """What pdsh does to the remote command for one host: ``%h`` filled in, ``%%`` made ``%``."""
    return command.replace("%%", "\0").replace("%h", host).replace("\0", "%")


def secret_cfg(**launcher: Any) -> NeoXConfig:
    cfg = NeoXConfig()
    cfg.launcher.launcher_env = {"WANDB_API_KEY": API_KEY, "PLAIN": "visible"}
    for key, value in launcher.items():
        setattr(cfg.launcher, key, value)
    return cfg


def launch_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HF_TOKEN": TOKEN, "HF_HOME": "/hf", **extra}


def assert_private(plan: LaunchPlan, root: Path, allowed: set[Path] = frozenset()) -> None:  # type: ignore[assignment]
    """No value in any argv or the dry-run text; no file under ``root`` holds one, but ``allowed`` (0600)."""
    text = plan.render()
    for value in (TOKEN, API_KEY):
        assert value not in text, text
        for command in plan.commands:
            assert not any(value in word for word in command.argv), command.argv
        for path in root.rglob("*"):
            if path.is_file() and path.name != "record.json" and value in path.read_text(errors="replace"):
                assert path in allowed, f"{value!r} written to {path}"
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    assert "visible" in text  # the rest is still shown


def assert_received(record: dict[str, Any]) -> None:
    assert record["env"]["HF_TOKEN"] == TOKEN and record["env"]["WANDB_API_KEY"] == API_KEY
    assert not any(TOKEN in word or API_KEY in word for word in record["argv"]), record["argv"]


def test_local_passes_credentials_in_the_environment_only(tmp_path: Path) -> None:
    fake = write_recorder(tmp_path)
    run_config = tmp_path / "run" / "run-config.yml"
    launcher = LocalLauncher(str(fake))
    cfg = secret_cfg(num_gpus=2)
    plan = launcher.build(cfg, launcher.resolve_hosts(cfg, {}), run_config, launch_env())
    assert "HF_TOKEN=***" in plan.render() and "WANDB_API_KEY=***" in plan.render()
    assert supervise(plan.commands) == 0
    got = records(tmp_path)
    assert len(got) == 2
    for record in got:
        assert_received(record)
    assert_private(plan, tmp_path)


def test_run_config_masks_launcher_env_credentials(tmp_path: Path) -> None:
    from neoxcli.config import load_config
    from neoxcli.training.launch import write_run_config

    path = write_run_config(secret_cfg(), tmp_path / "run-config.yml")
    assert API_KEY not in path.read_text()
    assert load_config([str(path)]).launcher.launcher_env == {"WANDB_API_KEY": "***", "PLAIN": "visible"}


def test_pdsh_sources_a_private_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    fake = write_recorder(tmp_path)
    run_config = tmp_path / "run" / "run-config.yml"
    plan = PdshLauncher(str(fake)).build(
        secret_cfg(), [Node("node01", (0,)), Node("node02", (0,))], run_config, launch_env()
    )
    env_file = run_config.parent / "rank-secrets.env"
    assert list(plan.private_files) == [env_file]
    assert "HF_TOKEN=***" in plan.render()
    plan.write_files()
    assert_private(plan, tmp_path, {env_file})
    assert TOKEN in env_file.read_text()
    script = pdsh_substitute(plan.commands[0].argv[-1], "node02")
    result = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr  # sourced, never echoed
    (record,) = records(tmp_path)
    assert_received(record)
    assert record["env"]["PLAIN"] == "visible"
    plan.remove_private_files()
    assert not env_file.exists()


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun is not installed")
def test_openmpi_passes_credentials_by_name(tmp_path: Path) -> None:
    fake = write_recorder(tmp_path)
    run_config = tmp_path / "run" / "run-config.yml"
    lo = ["--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo", "--oversubscribe"]
    cfg = secret_cfg(mpi_flavor="openmpi", launcher_args=lo)
    plan = MpiLauncher(str(fake)).build(cfg, [Node("localhost", (0, 1))], run_config, launch_env())
    argv = plan.commands[0].argv
    assert ["-x", "HF_TOKEN"] == argv[argv.index("HF_TOKEN") - 1 : argv.index("HF_TOKEN") + 1]
    assert "-x" in argv and "WANDB_API_KEY" in argv
    plan.write_files()
    assert_private(plan, tmp_path)
    assert supervise(plan.commands) == 0
    got = records(tmp_path)
    assert sorted(r["env"]["OMPI_COMM_WORLD_RANK"] for r in got) == ["0", "1"]
    for record in got:
        assert_received(record)


@pytest.mark.parametrize("flavor", ["mpich", "intel"])
def test_hydra_passes_credentials_by_name(flavor: str, tmp_path: Path) -> None:
    plan = MpiLauncher("py").build(
        secret_cfg(mpi_flavor=flavor), [Node("n1", (0,)), Node("n2", (0,))], tmp_path / "rc.yml", launch_env()
    )
    argv = plan.commands[0].argv
    names = argv[argv.index("-genvlist") + 1].split(",")
    assert set(names) == {"HF_TOKEN", "WANDB_API_KEY"}
    assert plan.commands[0].env == {"HF_TOKEN": TOKEN, "WANDB_API_KEY": API_KEY}
    assert_private(plan, tmp_path)


def test_srun_exports_credentials_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_recorder(tmp_path, "srun").rename(bindir / "srun")
    job = {"SLURM_JOB_NODELIST": "node[01-02]", "SLURM_TASKS_PER_NODE": "1(x2)"}
    launcher = SlurmLauncher("py")
    env = launch_env(**job)
    plan = launcher.build(secret_cfg(), launcher.resolve_hosts(secret_cfg(), env), tmp_path / "rc.yml", env)
    export = next(w for w in plan.commands[0].argv if w.startswith("--export="))
    assert {"HF_TOKEN", "WANDB_API_KEY"} <= set(export.split("=", 1)[1].split(","))
    assert "HF_TOKEN=***" in plan.render()
    assert_private(plan, tmp_path)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert supervise(plan.commands) == 0
    (record,) = records(tmp_path)
    assert_received(record)


def test_sbatch_script_is_private_and_holds_no_credential(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_recorder(tmp_path, "srun").rename(bindir / "srun")
    run_config = tmp_path / "run" / "run-config.yml"
    launcher = SlurmLauncher("py")
    cfg = secret_cfg(sbatch=True, num_nodes=2, num_gpus=1)
    plan = launcher.build(cfg, launcher.resolve_hosts(cfg, {}), run_config, launch_env())
    (script,) = plan.files
    old = os.umask(0o022)
    try:
        plan.write_files()
    finally:
        os.umask(old)
    assert stat.S_IMODE(script.stat().st_mode) == 0o600
    assert_private(plan, tmp_path)
    assert "export PLAIN=visible" in script.read_text()
    assert plan.commands[0].env == {"HF_TOKEN": TOKEN, "WANDB_API_KEY": API_KEY}
    # sbatch hands its own environment to the job; srun exports the names from it.
    env = {"PATH": f"{bindir}:/usr/bin:/bin", **plan.commands[0].env}
    result = subprocess.run(["sh", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (record,) = records(tmp_path)
    assert_received(record)


def test_jsrun_passes_credentials_in_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = write_recorder(tmp_path)
    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "jsrun.log"
    monkeypatch.setenv("FAKE_JSRUN_LOG", str(log))
    plan = JsrunLauncher(str(fake)).build(
        secret_cfg(), [Node("a", (0,)), Node("b", (0,))], tmp_path / "rc.yml", launch_env()
    )
    assert_private(plan, tmp_path)
    assert supervise(plan.commands) == 0
    got = records(tmp_path)
    assert len(got) == 2
    for record in got:
        assert_received(record)
    assert TOKEN not in log.read_text() and API_KEY not in log.read_text()


def test_cli_dry_run_masks_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from neoxcli.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    (tmp_path / "hosts").write_text("node01 slots=1\nnode02 slots=1\n")
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(f"save: {tmp_path / 'run'}\nlauncher_env:\n  WANDB_API_KEY: {API_KEY}\n")
    for args in (["--launcher", "pdsh", "--hostfile", "hosts"], ["--launcher", "local", "--num-gpus", "2"]):
        assert main(["train", str(cfg), *args, "--dry-run"]) == 0
        out, err = capsys.readouterr()
        assert TOKEN not in out + err and API_KEY not in out + err
        assert "***" in out
    assert not (tmp_path / "run").exists()


# --- frozen and failing ranks: real 2-rank CPU trainings -----------------------------------------

sys.path.insert(0, str(Path(__file__).parents[1] / "cluster"))
from runs import (  # noqa: E402
    NEOX,
    finish_timed,
    processes_mentioning,
    wait_for_path,
    write_hooks,
    write_tiny_config,
)

TIMEOUT_S = 15.0


def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_PREFIXES)}
    env.update(DS_ACCELERATOR="cpu", NEOX_DEBUG="0", **extra)
    return env


def rank_pid(config: Path, rank: int) -> int:
    """The pid of the worker process of ``rank`` in the run of ``config``."""
    for pid in processes_mentioning(str(config)):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[1:3] == [b"-m", b"neoxcli.training.worker"] and f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker for rank {rank}")


@pytest.mark.slow
def test_stopped_rank_ends_the_job_within_the_timeout(tmp_path: Path) -> None:
    save = tmp_path / "run"
    cfg = write_tiny_config(
        tmp_path, save, train_iters=100000, checkpoint_factor=2, distributed_timeout_minutes=TIMEOUT_S / 60
    )
    proc = subprocess.Popen(
        [*NEOX, "train", str(cfg), "--launcher", "local", "--num-gpus", "2"],
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reached = wait_for_path(save / "global_step4", proc)
        assert reached, "training never reached step 4"
        os.kill(rank_pid(save / "run-config.yml", 1), 19)  # SIGSTOP
        out, err, took = finish_timed(proc, TIMEOUT_S + 45)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"frozen rank: job ended {took:.1f} s after SIGSTOP (timeout {TIMEOUT_S:.0f} s)")
    assert proc.returncode == 124, out[-2000:] + err[-3000:]
    assert took < TIMEOUT_S + 20, took
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: rank 1 on localhost stopped responding during "), err
    assert "step " in line
    assert "(no heartbeat for " in line and line.endswith("; stopped the other ranks")
    assert f"hint: rank 1's output is in {save / 'logs' / 'rank-1.log'}" in err
    assert "Traceback" not in err
    assert (save / "logs" / "rank-0.log").is_file()
    assert processes_mentioning(str(save / "run-config.yml")) == []


@pytest.mark.slow
def test_dead_rank_is_one_line_and_its_peers_traceback_stays_in_its_log(tmp_path: Path) -> None:
    hooks = write_hooks(tmp_path / "hooks")
    save = tmp_path / "run"
    cfg = write_tiny_config(tmp_path, save, train_iters=100000, checkpoint_factor=2)
    trigger = save / "global_step2"
    pythonpath = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    env = run_env(PYTHONPATH=pythonpath, NEOX_TEST_FAIL_RANK="1", NEOX_TEST_FAIL_AFTER=str(trigger))
    proc = subprocess.Popen(
        [*NEOX, "train", str(cfg), "--launcher", "local", "--num-gpus", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for_path(trigger, proc)
    out, err, took = finish_timed(proc, 90)
    assert proc.returncode == 3, out[-2000:] + err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0] == "error: rank 1 on localhost exited with code 3; stopped the other ranks", err
    assert lines[1].startswith(f"hint: rank 1's output is in {save / 'logs' / 'rank-1.log'}"), err
    assert len(lines) == 2 and "Traceback" not in out + err
    assert "step      2" in out  # rank 0's progress still reaches the console
    assert "started" in (save / "logs" / "rank-1.log").read_text()


@pytest.mark.slow
def test_error_raised_in_every_rank_is_printed_once(tmp_path: Path) -> None:
    save = tmp_path / "run"
    cfg = write_tiny_config(tmp_path, save)
    settings = json.loads(cfg.read_text())
    settings["data_path"] = str(tmp_path / "missing" / "corpus_text_document")
    cfg.write_text(json.dumps(settings))
    result = subprocess.run(
        [*NEOX, "train", str(cfg), "--launcher", "local", "--num-gpus", "2"],
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr


# --- the node agent watches its own ranks' heartbeats (pdsh, srun, mpirun, jsrun) -----------------

FAKE_WORKER = """
import json, os, signal, sys, time
rank = os.environ["RANK"]
path = os.environ["NEOX_HEARTBEAT_FILE"]
print(f"error: [rank {rank}] the same message from every rank", file=sys.stderr, flush=True)
for step in range(1, 1000):
    record = {"rank": int(rank), "phase": f"step {step}", "step": step, "timeout_s": 2.0,
              "interval_s": 0.2, "stuck_s": 0.0}
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)
    if rank == "1" and step == 3:
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(0.2)
"""


def test_agent_names_its_frozen_rank_and_keeps_output_in_logs(tmp_path: Path) -> None:
    from neoxcli.launchers.supervisor import failure_from_line

    fake = tmp_path / "fake-python"
    fake.write_text(f"#!{sys.executable}\n{FAKE_WORKER}")
    fake.chmod(0o755)
    run_config = tmp_path / "run" / "run-config.yml"
    agent = [sys.executable, "-m", "neoxcli.launchers.node_agent", "--host", "localhost"]
    agent += ["--node", "localhost=0,1", "--grace", "2", "--"]
    worker = [str(fake), "-m", "neoxcli.training.worker", "--config", str(run_config)]
    result = subprocess.run([*agent, *worker], capture_output=True, text=True, timeout=30)
    assert result.returncode == 124, result.stderr
    lines = result.stderr.splitlines()
    assert (
        lines.count("error: [rank 0] the same message from every rank")
        + lines.count("error: [rank 1] the same message from every rank")
        == 1
    ), result.stderr
    (report,) = [line for line in lines if line.startswith("neox: rank")]
    log = run_config.parent / "logs" / "rank-1.log"
    assert report.startswith(
        "neox: rank 1 on host localhost stopped responding during step 3 (no heartbeat for "
    )
    assert report.endswith(f" (log: {log})")
    failure = failure_from_line("node02: " + report)
    assert failure is not None and failure.code == 124 and failure.log == log
    assert failure.who == "rank 1 on host localhost" and failure.what.startswith(
        "stopped responding during step 3"
    )
    assert "the same message" in log.read_text()


def test_watch_prefers_a_silent_peer_to_the_rank_stuck_waiting_for_it(tmp_path: Path) -> None:
    import time

    from neoxcli.launchers.heartbeat import Watch

    watch = Watch(tmp_path)

    def write(key: int, stuck_s: float, age_s: float = 0.0) -> None:
        path = watch.path(key)
        record = {"rank": key, "phase": "step 7", "step": 7, "timeout_s": 30.0, "interval_s": 0.2}
        path.write_text(json.dumps({**record, "stuck_s": stuck_s}))
        os.utime(path, (time.time() - age_s, time.time() - age_s))

    write(0, stuck_s=31.0)
    write(1, stuck_s=0.0)
    assert watch.check() is None  # a stuck flag must stand a few beats first
    time.sleep(2.8)
    write(0, stuck_s=34.0)
    write(1, stuck_s=0.0)
    hang = watch.check()
    assert hang is not None and hang.key == 0 and hang.what == "made no progress during step 7 for 34 s"
    write(1, stuck_s=0.0, age_s=5.0)  # silent, though not yet past the timeout: it explains rank 0
    hang = watch.check()
    assert hang is not None and hang.key == 1 and hang.what.startswith("stopped responding during step 7")
    write(1, stuck_s=0.0, age_s=40.0)
    assert watch.check(exclude={1}) is not None and watch.check(exclude={1}).key == 0  # type: ignore[union-attr]
