"""Sampling and KV-cached generation, one prompt or a batch of them."""

from neoxcli.generation.decode import Completion, generate, generate_batch
from neoxcli.generation.sampling import filter_logits, sample_next

__all__ = ["Completion", "filter_logits", "generate", "generate_batch", "sample_next"]
