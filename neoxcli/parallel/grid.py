"""Process groups for tensor x pipeline x data parallelism, in GPT-NeoX's rank order.

Ranks are laid out as DeepSpeed's ``PipeModelDataParallelTopology`` lays them
out (axes pipe, data, model; model varies fastest), so the groups built here
and the ones DeepSpeed's ``PipelineModule`` builds for the same job contain the
same ranks. Tensor-parallel ranks are neighbours, which keeps their frequent
all-reduces inside one host.

``ParallelGrid`` doubles as the ``mpu`` object DeepSpeed asks for: with it,
ZeRO reduces gradients over the data-parallel group only, gradient-norm
clipping counts tensor-parallel shards once each, and checkpoints are written
as ``mp_rank_{tp:02d}_model_states.pt`` per tensor-parallel rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neoxcli.errors import NeoxError


@dataclass(frozen=True)
class Layout:
    """The parallel shape of a job; stored in every checkpoint to detect layout changes."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    zero_stage: int = 0

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(pipe stage, data-parallel rank, tensor-parallel rank) of a global rank."""
        return rank // (self.dp * self.tp), (rank // self.tp) % self.dp, rank % self.tp

    def rank_of(self, pipe: int, data: int, model: int) -> int:
        return (pipe * self.dp + data) * self.tp + model

    def as_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp, "zero_stage": self.zero_stage}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        return cls(**{k: int(data[k]) for k in ("tp", "pp", "dp", "zero_stage") if k in data})


class ParallelGrid:
    """This rank's place in a ``Layout`` and the torch process groups it talks over.

    Every rank must build the grid (``new_group`` is collective, and all ranks
    create the groups in the same order). Without torch.distributed (one
    process) all groups are None and every size is 1.
    """

    def __init__(self, layout: Layout, rank: int = 0) -> None:
        self.layout = layout
        self.rank = rank
        self.stage, self.dp_rank, self.tp_rank = layout.coords(rank)
        self.tp_group: Any = None
        self.dp_group: Any = None
        self.pp_group: Any = None
        self.replica_group: Any = None  # all ranks of one model replica (pipe x model)
        if layout.world_size == 1:
            return
        import torch.distributed as torch_dist

        if not torch_dist.is_initialized() or torch_dist.get_world_size() != layout.world_size:
            raise NeoxError(
                f"parallel layout tp={layout.tp} x pp={layout.pp} x dp={layout.dp} needs "
                f"{layout.world_size} processes, the job has "
                f"{torch_dist.get_world_size() if torch_dist.is_initialized() else 1}"
            )
        lay = layout
        for p in range(lay.pp):
            for d in range(lay.dp):
                ranks = [lay.rank_of(p, d, m) for m in range(lay.tp)]
                self.tp_group = self._group(ranks, self.tp_group)
        for p in range(lay.pp):
            for m in range(lay.tp):
                ranks = [lay.rank_of(p, d, m) for d in range(lay.dp)]
                self.dp_group = self._group(ranks, self.dp_group)
        for d in range(lay.dp):
            for m in range(lay.tp):
                ranks = [lay.rank_of(p, d, m) for p in range(lay.pp)]
                self.pp_group = self._group(ranks, self.pp_group)
        for d in range(lay.dp):
            ranks = sorted(lay.rank_of(p, d, m) for p in range(lay.pp) for m in range(lay.tp))
            self.replica_group = self._group(ranks, self.replica_group)

    def _group(self, ranks: list[int], mine: Any) -> Any:
        import torch.distributed as torch_dist

        group = torch_dist.new_group(ranks=ranks)
        return group if self.rank in ranks else mine

    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def pp(self) -> int:
        return self.layout.pp

    @property
    def dp(self) -> int:
        return self.layout.dp

    def topology(self) -> Any:
        """DeepSpeed's topology object for the same layout (what ``PipelineModule`` takes)."""
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        return PipeModelDataParallelTopology(num_pp=self.pp, num_mp=self.tp, num_dp=self.dp)

    # ------------------------------------------------------------------ DeepSpeed's mpu interface
    # "Model parallel" in DeepSpeed's sense is tensor slicing when there is no pipeline.

    def get_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tp

    def get_model_parallel_group(self) -> Any:
        return self.tp_group

    def get_tensor_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self.tp

    def get_tensor_model_parallel_group(self) -> Any:
        return self.tp_group

    def get_slice_parallel_rank(self) -> int:
        return self.tp_rank

    def get_slice_parallel_world_size(self) -> int:
        return self.tp

    def get_slice_parallel_group(self) -> Any:
        return self.tp_group

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.dp

    def get_data_parallel_group(self) -> Any:
        return self.dp_group

    def get_pipe_parallel_rank(self) -> int:
        return self.stage

    def get_pipe_parallel_world_size(self) -> int:
        return self.pp

    def get_pipe_parallel_group(self) -> Any:
        return self.pp_group
