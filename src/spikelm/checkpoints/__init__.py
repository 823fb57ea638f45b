"""Checkpoints: reading files (:mod:`.files`), the RWKV-6 and SpikeGPT formats, and
:func:`load` / :func:`save` of plain and converted models (:mod:`.loading`)."""

from .files import read_state, read_tensors, write_torch
from .loading import build_model, describe, load, load_state_dict, model_config, n_params, save, save_official
from .rwkv6 import from_hf_keys, infer_rwkv6_config
from .spikegpt import infer_spikegpt_config, is_spikegpt_state_dict, load_spikegpt, spikegpt_from_state_dict

__all__ = ["read_tensors", "read_state", "write_torch", "load", "save", "save_official", "load_state_dict", "build_model",
           "describe", "n_params", "model_config",
           "from_hf_keys", "infer_rwkv6_config", "infer_spikegpt_config", "is_spikegpt_state_dict", "load_spikegpt",
           "spikegpt_from_state_dict"]
