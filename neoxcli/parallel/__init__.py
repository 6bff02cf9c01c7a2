"""Tensor, pipeline and data parallelism for GPT models, applied from outside the model code."""

from neoxcli.parallel.grid import Layout, ParallelGrid

__all__ = ["Layout", "ParallelGrid"]
