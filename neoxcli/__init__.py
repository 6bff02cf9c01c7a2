"""neox: pretrain, sample, evaluate and export GPT-NeoX-style language models."""

__version__ = "0.1.0"
