"""The supported Hugging Face architectures and the dispatch to their state-dict maps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from neoxcli.config.schema import ModelConfig
from neoxcli.convert._common import ConversionError, StateDict, config_dict
from neoxcli.convert.gpt2 import hf_gpt2_to_neox, neox_to_hf_gpt2
from neoxcli.convert.gpt_neox import hf_gptneox_to_neox, neox_to_hf_gptneox
from neoxcli.convert.gptj import hf_gptj_to_neox, neox_to_hf_gptj
from neoxcli.convert.llama import hf_llama_to_neox, neox_to_hf_llama

FromHF = Callable[[Mapping[str, Tensor], Any], tuple[dict[str, Any], StateDict]]
ToHF = Callable[[ModelConfig, Mapping[str, Tensor], "int | None"], tuple[dict[str, Any], StateDict]]

#: Hugging Face ``model_type`` -> (import map, export map).
ARCHITECTURES: dict[str, tuple[FromHF, ToHF]] = {
    "gpt_neox": (hf_gptneox_to_neox, neox_to_hf_gptneox),
    "gptj": (hf_gptj_to_neox, neox_to_hf_gptj),
    "llama": (hf_llama_to_neox, neox_to_hf_llama),
    "gpt2": (hf_gpt2_to_neox, neox_to_hf_gpt2),
}


def from_hf(state_dict: Mapping[str, Tensor], hf_config: Any) -> tuple[dict[str, Any], StateDict]:
    """Import any supported architecture, chosen by the config's ``model_type``."""
    model_type = config_dict(hf_config).get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConversionError(
            f"unsupported Hugging Face model_type {model_type!r}",
            hint=f"supported: {', '.join(sorted(ARCHITECTURES))}",
        )
    try:
        return ARCHITECTURES[model_type][0](state_dict, hf_config)
    except KeyError as exc:  # the maps index what every such model has; a file without it is incomplete
        raise ConversionError(
            f"the {model_type} model has no {exc.args[0]!r} (in config.json or the weights)",
            hint="the directory is incomplete; compare it with the model's original files",
        ) from None


def to_hf(
    model_type: str, cfg: ModelConfig, state_dict: Mapping[str, Tensor], vocab_size: int | None = None
) -> tuple[dict[str, Any], StateDict]:
    """Export to ``model_type`` (``gpt_neox``, ``gptj``, ``llama``, ``gpt2``)."""
    if model_type not in ARCHITECTURES:
        raise ConversionError(
            f"cannot export to {model_type!r}", hint=f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type][1](cfg, state_dict, vocab_size)
