"""Sampling and KV-cached generation."""

from neoxcli.generation.sampling import filter_logits, generate, sample_next

__all__ = ["filter_logits", "generate", "sample_next"]
