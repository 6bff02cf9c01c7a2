"""A throwaway two-host cluster on this machine, for the real launcher tier.

Two network namespaces joined by a veth pair on a private test subnet (no
route anywhere else) are the hosts ``node01`` and ``node02``. Each runs its own
sshd and slurmd under its own host name and a private ``/etc/hosts`` (a bind
mount in a private mount namespace, so this machine's file is never touched);
``node01`` also runs slurmctld, and one private munged serves both. Clients get
a private ssh config through an ``ssh`` wrapper first on PATH.

Everything started here is recorded by pid and stopped by pid; the namespaces
are deleted at the end. Nothing listens outside the two namespaces except
munged's unix socket under the cluster's own directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.213.0"
HOSTS = (("node01", f"{SUBNET}.1"), ("node02", f"{SUBNET}.2"))
IFACE = "nx0"  # the veth end's name inside each namespace (both may use it)
PACKAGES = "pdsh openssh-server openssh-client openmpi-bin libopenmpi-dev slurm-wlm munge"
EXECUTABLES = (
    "pdsh",
    "ssh",
    "ssh-keygen",
    "sshd",
    "mpirun",
    "orted",
    "munged",
    "slurmctld",
    "slurmd",
    "srun",
    "sbatch",
    "salloc",
    "scontrol",
    "ip",
    "nsenter",
    "unshare",
)


def missing_requirements() -> str | None:
    """Why the cluster cannot be built here, or None."""
    if os.geteuid() != 0:
        return "the two-host cluster needs root (network namespaces, sshd, slurmd)"
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [name for name in EXECUTABLES if shutil.which(name, path=search) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install -y {PACKAGES}"
    return None


def _which(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        raise RuntimeError(f"{name} not found")
    return found


@dataclass
class Cluster:
    """The running cluster: where its files are and how to run a command on one of its hosts."""

    root: Path
    tag: str
    netns: dict[str, str] = field(default_factory=dict)  # host -> namespace name
    pidfiles: list[Path] = field(default_factory=list)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def hosts(self) -> list[str]:
        return [name for name, _ in HOSTS]

    @property
    def bindir(self) -> Path:
        return self.root / "bin"

    @property
    def slurm_conf(self) -> Path:
        return self.root / "slurm" / "slurm.conf"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for clients (neox, srun, pdsh): the ssh wrapper first on PATH, our slurm.conf."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "OMPI_", "PMI", "PMIX", "LSB_", "JSM_", "PDSH_"))
        }
        env.update(
            PATH=f"{self.bindir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
            SLURM_CONF=str(self.slurm_conf),
            PDSH_RCMD_TYPE="ssh",
        )
        env.update(extra or {})
        return env

    def on_host(self, host: str, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` on ``host``: its network, its host name and its /etc/hosts."""
        script = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
        return [
            _which("nsenter"),
            f"--net=/run/netns/{self.netns[host]}",
            _which("unshare"),
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(self.root / "hosts"),
            host,
            *argv,
        ]

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
        **kw,
    ) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return subprocess.run(
            self.on_host(host, argv),
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )

    def popen(
        self, host: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.on_host(host, argv),
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # --- bring-up -------------------------------------------------------------------------------

    def _sh(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    def _network(self) -> None:
        (a, addr_a), (b, addr_b) = HOSTS
        self.netns = {a: f"nx{self.tag}a", b: f"nx{self.tag}b"}
        for ns in self.netns.values():
            self._sh("ip", "netns", "add", ns)
        ends = {a: f"vx{self.tag}a", b: f"vx{self.tag}b"}
        self._sh("ip", "link", "add", ends[a], "type", "veth", "peer", "name", ends[b])
        for host, addr in HOSTS:
            ns = self.netns[host]
            self._sh("ip", "link", "set", ends[host], "netns", ns)
            self._sh("ip", "-n", ns, "link", "set", ends[host], "name", IFACE)
            self._sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", IFACE)
            self._sh("ip", "-n", ns, "link", "set", IFACE, "up")
            self._sh("ip", "-n", ns, "link", "set", "lo", "up")
        lines = ["127.0.0.1 localhost"] + [f"{addr} {host}" for host, addr in HOSTS]
        (self.root / "hosts").write_text("\n".join(lines) + "\n")

    def _ssh(self) -> None:
        d = self.root / "ssh"
        d.mkdir()
        for key in ("host_key", "id"):
            self._sh(_which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(d / key))
        shutil.copy(d / "id.pub", d / "authorized_keys")
        (d / "config").write_text(
            f"Host *\n  IdentityFile {d / 'id'}\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n"
        )
        self.bindir.mkdir()
        wrapper = self.bindir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {_which("ssh")} -F {d / "config"} "$@"\n')
        wrapper.chmod(0o755)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        for host, addr in HOSTS:
            conf = d / f"sshd-{host}.conf"
            pidfile = d / f"sshd-{host}.pid"
            conf.write_text(
                f"ListenAddress {addr}:22\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
                f"PidFile {pidfile}\nAcceptEnv none\n"
            )
            self.pidfiles.append(pidfile)
            subprocess.run(
                self.on_host(host, [_which("sshd"), "-f", str(conf), "-E", str(d / f"sshd-{host}.log")]),
                check=True,
                timeout=30,
            )

    def _munge(self) -> None:
        d = self.root / "munge"
        d.mkdir(mode=0o700)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        pidfile = d / "munged.pid"
        self.pidfiles.append(pidfile)
        subprocess.run(
            [
                _which("munged"),
                "--force",
                f"--socket={d / 'munge.socket'}",
                f"--key-file={key}",
                f"--pid-file={pidfile}",
                f"--log-file={d / 'munged.log'}",
                f"--seed-file={d / 'munged.seed'}",
            ],
            check=True,
            timeout=30,
            capture_output=True,
        )

    def _slurm(self) -> None:
        d = self.root / "slurm"
        d.mkdir()
        (d / "state").mkdir()
        for host, _ in HOSTS:
            (d / "spool" / host).mkdir(parents=True)
        cpus = os.cpu_count() or 1
        socket = self.root / "munge" / "munge.socket"
        nodes = "".join(
            f"NodeName={host} NodeAddr={addr} CPUs={cpus} RealMemory=1000 State=UNKNOWN\n"
            for host, addr in HOSTS
        )
        self.slurm_conf.write_text(
            f"ClusterName=neoxtest\nSlurmctldHost={HOSTS[0][0]}({HOSTS[0][1]})\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n"
            f"StateSaveLocation={d / 'state'}\nSlurmdSpoolDir={d / 'spool'}/%n\n"
            f"SlurmctldPidFile={d / 'slurmctld.pid'}\nSlurmdPidFile={d / 'slurmd-%n.pid'}\n"
            f"SlurmctldLogFile={d / 'slurmctld.log'}\nSlurmdLogFile={d / 'slurmd-%n.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/none\nSelectType=select/cons_tres\n"
            "SelectTypeParameters=CR_Core\nMpiDefault=none\nReturnToService=2\n"
            "SchedulerParameters=sched_interval=1\nKillWait=5\nInactiveLimit=0\n"
            f"{nodes}PartitionName=debug Nodes=ALL Default=YES State=UP MaxTime=INFINITE\n"
        )
        env = self.env()
        self.pidfiles.append(d / "slurmctld.pid")
        subprocess.run(
            self.on_host(HOSTS[0][0], [_which("slurmctld")]),
            env=env,
            check=True,
            timeout=30,
            capture_output=True,
        )
        for host, _ in HOSTS:
            self.pidfiles.append(d / f"slurmd-{host}.pid")
            subprocess.run(
                self.on_host(host, [_which("slurmd"), "-N", host]),
                env=env,
                check=True,
                timeout=30,
                capture_output=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self.run(HOSTS[0][0], ["sinfo", "-h", "-N", "-o", "%N %t"], timeout=30).stdout
            states = dict(line.split() for line in out.splitlines() if line.strip())
            if len(states) == 2 and all(s == "idle" for s in states.values()):
                return
            time.sleep(0.3)
        raise RuntimeError(f"slurm nodes never became idle: {out!r}; see {d}")

    def start(self) -> Cluster:
        try:
            self._network()
            self._munge()
            self._ssh()
            self._slurm()
        except BaseException:
            self.stop()
            raise
        return self

    # --- tear-down ------------------------------------------------------------------------------

    def _pids_in_namespaces(self) -> list[int]:
        pids: list[int] = []
        for ns in self.netns.values():
            out = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout
            pids += [int(p) for p in out.split()]
        return pids

    def stop(self) -> None:
        """Stop our daemons by pid file, then whatever is left in our namespaces, then delete them."""
        pids = []
        for pidfile in self.pidfiles:
            try:
                pids.append(int(pidfile.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
        for pid in pids:
            _kill(pid, signal.SIGTERM)
        _wait_gone(pids, 10)
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        # Jobs and sessions our daemons started live in our namespaces only.
        left = self._pids_in_namespaces()
        for pid in left:
            _kill(pid, signal.SIGKILL)
        _wait_gone(left, 5)
        for ns in self.netns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
            return
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
