"""``local``: N worker processes on this machine, with torchrun-style variables.

One rank runs in the ``neox train`` process itself (see
``neoxcli.training.launch``); this plugin covers two or more, started directly
(no agent: the supervisor knows each rank's number from its own bookkeeping).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from neoxcli.config.derived import default_world_size
from neoxcli.config.schema import NeoXConfig
from neoxcli.launchers.base import LaunchCommand, Launcher, LaunchPlan, Node
from neoxcli.launchers.hostfile import Host

LOCALHOST = "localhost"


def local_device_count() -> int:
    """GPUs on this machine, or 0 when there are none."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch always imports in practice
        return 0


class LocalLauncher(Launcher):
    name = "local"
    description = "1..N processes on this machine (num_gpus, default: one per GPU, else one model replica)"

    def resolve_hosts(self, config: NeoXConfig, env: Mapping[str, str]) -> list[Node]:
        # A hostfile describes other machines; locally only include/exclude of this host's slots apply.
        from neoxcli.launchers.base import select_nodes

        lc = config.launcher
        hosts = self.default_hosts(config, env)
        return select_nodes(hosts, lc.include, lc.exclude, -1, None)

    def default_hosts(self, config: NeoXConfig, env: Mapping[str, str]) -> list[Host]:
        gpus = config.launcher.num_gpus
        if not gpus or gpus < 1:
            # One rank per GPU; without GPUs, as many CPU ranks as one model replica needs
            # (model_parallel_size x pipe stages), so a TP/PP config runs as it is.
            gpus = local_device_count() or default_world_size(config)
        return [Host(LOCALHOST, gpus)]

    def master(self, config: NeoXConfig, hosts: Sequence[Node]) -> tuple[str, int]:
        from neoxcli.parallel.distributed import free_port

        lc = config.launcher
        # An unset port gets a free one, so two local runs (or test runs) never collide.
        port = lc.master_port if "master_port" in lc.model_fields_set else free_port()
        return lc.master_addr or "127.0.0.1", port

    def build(
        self, config: NeoXConfig, hosts: Sequence[Node], run_config_path: Path, env: Mapping[str, str]
    ) -> LaunchPlan:
        (node,) = hosts
        shared = self.rank_env(config, hosts, env)
        shared.setdefault("GLOO_SOCKET_IFNAME", "lo")  # everything is on this host
        commands = []
        for local, _device in enumerate(node.devices):
            rank_env = dict(shared)
            rank_env.update(RANK=str(local), LOCAL_RANK=str(local), LOCAL_WORLD_SIZE=str(node.slots))
            if not node.default_devices:
                rank_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in node.devices)
            commands.append(
                LaunchCommand(
                    self.worker_argv(run_config_path), rank_env, label=f"rank {local} on {LOCALHOST}"
                )
            )
        return LaunchPlan(self.name, commands, world_size=node.slots)
