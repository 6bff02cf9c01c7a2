"""State-dict maps between our model and Hugging Face formats, one module per architecture.

Each ``hf_<arch>_to_neox(state_dict, hf_config)`` returns ``(ModelConfig kwargs,
our state dict)``; each ``neox_to_hf_<arch>(cfg, state_dict)`` returns
``(config.json dict, HF state dict)`` and raises ``ConversionError`` for
features the target cannot express. ``from_hf`` / ``to_hf`` pick the map.
"""

from __future__ import annotations

from neoxcli.convert._common import ConversionError
from neoxcli.convert.archs import ARCHITECTURES, from_hf, to_hf
from neoxcli.convert.gpt2 import hf_gpt2_to_neox, neox_to_hf_gpt2
from neoxcli.convert.gpt_neox import hf_gptneox_to_neox, neox_to_hf_gptneox
from neoxcli.convert.gptj import hf_gptj_to_neox, neox_to_hf_gptj
from neoxcli.convert.hf_io import load_hf_dir, save_hf_dir
from neoxcli.convert.llama import hf_llama_to_neox, neox_to_hf_llama
from neoxcli.convert.neox_checkpoint import load_gpt_neox_checkpoint

__all__ = [
    "ARCHITECTURES",
    "ConversionError",
    "from_hf",
    "hf_gpt2_to_neox",
    "hf_gptj_to_neox",
    "hf_gptneox_to_neox",
    "hf_llama_to_neox",
    "load_gpt_neox_checkpoint",
    "load_hf_dir",
    "neox_to_hf_gpt2",
    "neox_to_hf_gptj",
    "neox_to_hf_gptneox",
    "neox_to_hf_llama",
    "save_hf_dir",
    "to_hf",
]
