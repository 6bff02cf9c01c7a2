"""Weight initialisation under GPT-NeoX's method names.

``init_method`` applies to embeddings and input projections, ``output_layer_init_method``
to the projections that write into the residual stream (attention ``dense`` and
``mlp.dense_4h_to_h``); scaling those down with depth keeps the residual stream's
variance from growing with the number of layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from neoxcli.config.schema import ModelConfig

InitFn = Callable[[Tensor], Tensor]


def _normal(std: float) -> InitFn:
    return lambda t: torch.nn.init.normal_(t, mean=0.0, std=std)


def init_function(name: str, cfg: ModelConfig) -> InitFn:
    """The in-place initialiser called ``name`` in GPT-NeoX, for this model's sizes."""
    std, layers, hidden = cfg.init_method_std, cfg.num_layers, cfg.hidden_size
    if name == "normal":
        return _normal(std)
    if name == "scaled_normal":  # GPT-2: divide by sqrt(2 * layers), one residual write per sublayer
        return _normal(std / math.sqrt(2.0 * layers))
    if name == "small_init":  # Nguyen & Salazar (2019): sqrt(2 / (5 d))
        return _normal(math.sqrt(2.0 / (5.0 * hidden)))
    if name == "wang_init":  # Ben Wang's GPT-J init: 2 / (layers * sqrt(d))
        return _normal(2.0 / layers / math.sqrt(hidden))
    if name == "orthogonal":
        return lambda t: torch.nn.init.orthogonal_(t, gain=math.sqrt(2.0))
    if name == "scaled_orthogonal":
        return lambda t: torch.nn.init.orthogonal_(t, gain=math.sqrt(2.0 / layers))
    if name == "xavier_uniform":
        return torch.nn.init.xavier_uniform_
    if name == "xavier_normal":
        return torch.nn.init.xavier_normal_
    raise ValueError(f"unknown init method {name!r}")
