"""Packed documents: what a sample's EOD tokens mean for the loss, the positions and the attention.

GPT-NeoX's samples are windows over a stream of documents, each ended by the
tokenizer's EOD token, so one sample usually holds the end of one document and
the start of the next. Three keys (``data`` section) say how training treats
the boundaries, with GPT-NeoX's and Megatron-LM's semantics on the input tokens
``tokens[:-1]`` of a sample (labels are ``tokens[1:]``):

* ``eod_mask_loss`` (GPT-NeoX): a position whose *input* token is EOD is left
  out of the loss (its label becomes the ignore index -100, so every loss path,
  fused, vocab-parallel and pipeline, takes the mean over the rest);
* ``reset_position_ids`` (Megatron-LM): positions restart at 0 after each EOD;
  the EOD itself keeps the position it has in the document it ends;
* ``reset_attention_mask`` (Megatron-LM): a token after an EOD attends to
  nothing at or before it; the model gets ``document_ids`` ``[B, T]`` (the
  number of EODs before each position) and attends within equal ids.

All three depend only on the tokens at or before a position, so a batch cut to
a shorter length (a sequence-length curriculum) keeps the prefix of each.

A batch is ``(inputs, labels)``: ``inputs`` is the token tensor, or, when a
reset key is on, the tuple ``(tokens, position_ids)`` or ``(tokens,
position_ids, document_ids)``, the form DeepSpeed's pipeline engine hands to
the first stage (``neoxcli.parallel.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neoxcli.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where tensors are made: the launching process needs none
    from torch import Tensor

IGNORE_INDEX = -100  # the label every loss in neox leaves out


def document_positions(tokens: Tensor, eod: int) -> Tensor:
    """Position ids ``[B, T]`` that restart at 0 after each ``eod`` in ``tokens`` ``[B, T]``."""
    import torch

    t = tokens.shape[-1]
    idx = torch.arange(t, device=tokens.device).expand_as(tokens)
    # Where the document of each position starts: one past the last EOD strictly before it.
    after_eod = torch.where(tokens == eod, idx + 1, torch.zeros_like(idx))
    start = torch.cat([torch.zeros_like(idx[..., :1]), after_eod[..., :-1]], dim=-1).cummax(dim=-1).values
    return idx - start


def document_ids(tokens: Tensor, eod: int) -> Tensor:
    """``[B, T]``: how many ``eod`` tokens come before each position (an EOD belongs to the document it ends)."""
    is_eod = (tokens == eod).long()
    return is_eod.cumsum(dim=-1) - is_eod


@dataclass(frozen=True)
class DocumentMasks:
    """Which of the three packed-document keys a run uses, and the EOD token they act on."""

    eod: int
    mask_loss: bool = False
    reset_positions: bool = False
    reset_attention: bool = False

    def apply(self, tokens: Tensor, labels: Tensor) -> tuple[Any, Tensor]:
        """The batch ``(inputs, labels)`` for input ``tokens`` and their ``labels`` (see the module doc)."""
        if self.mask_loss:
            labels = labels.masked_fill(tokens == self.eod, IGNORE_INDEX)
        if not (self.reset_positions or self.reset_attention):
            return tokens, labels
        import torch

        if self.reset_positions:
            positions = document_positions(tokens, self.eod)
        else:
            positions = torch.arange(tokens.shape[-1], device=tokens.device).expand_as(tokens).contiguous()
        if not self.reset_attention:
            return (tokens, positions), labels
        return (tokens, positions, document_ids(tokens, self.eod)), labels

    def describe(self) -> str:
        """One line for the start of a run: which keys are on and the EOD token id."""
        keys = [
            name
            for name, on in (
                ("eod_mask_loss", self.mask_loss),
                ("reset_position_ids", self.reset_positions),
                ("reset_attention_mask", self.reset_attention),
            )
            if on
        ]
        return f"packed documents: {', '.join(keys)} at the EOD token (id {self.eod})"


def document_masks(data: Any, eod_id: int | None, tokenizer_name: str) -> DocumentMasks | None:
    """The run's ``DocumentMasks`` from its ``data`` section, or None when none of the keys is on.

    A key that needs an EOD token with a tokenizer that has none is a config error.
    """
    on = [
        key for key in ("eod_mask_loss", "reset_position_ids", "reset_attention_mask") if getattr(data, key)
    ]
    if not on:
        return None
    if eod_id is None:
        raise ConfigError(
            f"data.{on[0]}: the tokenizer {tokenizer_name} has no end-of-document token to act on",
            hint="use a tokenizer with an EOD token, or turn the key off",
        )
    return DocumentMasks(
        eod=int(eod_id),
        mask_loss=data.eod_mask_loss,
        reset_positions=data.reset_position_ids,
        reset_attention=data.reset_attention_mask,
    )


def split_inputs(inputs: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """``inputs`` of a batch as the model's token tensor and its keyword arguments."""
    if not isinstance(inputs, tuple):
        return inputs, {}
    tokens, positions, *rest = inputs
    kwargs = {"position_ids": positions}
    if rest:
        kwargs["document_ids"] = rest[0]
    return tokens, kwargs


def map_batch(batch: Any, fn: Any) -> Any:
    """``batch`` (tensors, nested in tuples) with ``fn`` applied to every tensor."""
    if isinstance(batch, tuple):
        return tuple(map_batch(part, fn) for part in batch)
    return fn(batch)
