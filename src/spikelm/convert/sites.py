"""Spike-encoding sites: which inputs of a model get encoded, and swapping them for spiking modules.

Sites (``EncodingConfig.sites``):

* ``time_mix`` (the SpikeRWKV paper's Fig. 1): the ddlerp outputs feeding ``receptance``, ``key``,
  ``value`` and ``gate`` of every TimeMix;
* ``all``: those, plus the TimeMix ``output`` projection, the three ChannelMix projections and the
  inputs of the two LoRA projections (``maa_in`` feeds ``time_maa_w1``, ``decay_in`` feeds
  ``time_decay_w1``). The LM head stays dense in both (it is not in any block; a reading the
  paper does not contradict, since its spiking sites are the time-mixing inputs).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from ..config import ConfigError, EncodingConfig
from ..errors import SpikelmError
from ..ops.backend import set_backend
from ..models.quantized import plain_twin, spiking_twin
from ..spiking.layers import SpikeEncoder, SpikingLinear

__all__ = ["site_names", "attach_encoders", "detach_encoders", "encoders", "set_method", "check_convertible"]


def check_convertible(model: nn.Module) -> None:
    """Raise a named error for a model family the SpikeRWKV conversion does not apply to."""
    kind = getattr(getattr(model, "cfg", None), "kind", None)
    if kind not in ("rwkv6", "rwkv7"):
        raise SpikelmError(f"spike-encoding conversion applies to RWKV-6 and RWKV-7 models; this is a {kind or type(model).__name__} "
                           "model (SpikeGPT is spiking already: evaluate it without --preset/--encoding)")


_TIME_MIX_LINEARS = ("receptance", "key", "value", "gate")


def site_names(model: nn.Module, sites: str) -> list[str]:
    """Qualified names of the modules whose input gets spike-encoded."""
    if sites not in ("time_mix", "all"):
        raise ConfigError(f"sites: unknown site set {sites!r}; choose time_mix or all")
    check_convertible(model)
    if hasattr(model, "spike_sites"):  # a model that declares its own sites (RWKV-7)
        return model.spike_sites(sites)
    names = []
    for i, _ in enumerate(model.blocks):
        names += [f"blocks.{i}.att.{n}" for n in _TIME_MIX_LINEARS]
        if sites == "all":
            names += [f"blocks.{i}.att.output", f"blocks.{i}.att.maa_in", f"blocks.{i}.att.decay_in",
                      f"blocks.{i}.ffn.key", f"blocks.{i}.ffn.receptance", f"blocks.{i}.ffn.value"]
    return names


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at ``name``, carrying over the backend the replaced module had
    (``spikelm.ops.set_backend``), or the model's where that one had none (an nn.Identity site)."""
    old = _get(model, name)
    backend = getattr(old, "backend", None) or getattr(model, "backend", None)
    if backend is not None:
        set_backend(module, backend)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _in_features(model: nn.Module, name: str) -> int:
    mod = _get(model, name)
    if isinstance(mod, nn.Linear):
        return mod.in_features
    return model.cfg.n_embd  # maa_in / decay_in read the (B, T, C) stream


def attach_encoders(model: nn.Module, enc: EncodingConfig) -> nn.Module:
    """Swap the sites for spiking modules with unit scales (the structure of a converted model)."""
    for name in site_names(model, enc.sites):
        mod = _get(model, name)
        if isinstance(mod, (SpikingLinear, SpikeEncoder)):
            raise SpikelmError(f"{name} is already spike-encoded; convert the original ANN instead")
        if isinstance(mod, nn.Linear):  # the weight (quantised or not) is shared, not copied
            _set(model, name, spiking_twin(mod, SpikeEncoder(enc, mod.in_features).to(mod.weight.device)))
        else:
            _set(model, name, SpikeEncoder(enc, _in_features(model, name)).to(model.emb.weight.device))
    model.encoding = enc
    return model


def detach_encoders(model: nn.Module) -> nn.Module:
    """Undo :func:`attach_encoders` in place: every spiking linear becomes a plain ``nn.Linear``
    sharing its weight, every bare encoder an ``nn.Identity``. The ANN comes back without a copy."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SpikingLinear):
            _set(model, name, plain_twin(mod))
        elif isinstance(mod, SpikeEncoder) and not name.endswith(".encoder"):
            _set(model, name, nn.Identity())
    model.encoding = None
    return model


def encoders(model: nn.Module) -> Iterator[tuple[str, SpikeEncoder]]:
    """(site name, encoder) pairs of a converted model; site name = the module whose input it encodes."""
    for name, mod in model.named_modules():
        if isinstance(mod, SpikeEncoder):
            yield (name[: -len(".encoder")] if name.endswith(".encoder") else name), mod


def set_method(model: nn.Module, method: str) -> nn.Module:
    """Switch every encoder between the closed form (``closed``) and the simulation (``sim``)."""
    if method not in ("closed", "sim"):
        raise ConfigError(f"method: unknown {method!r}; choose closed or sim")
    for _, e in encoders(model):
        e.method = method
    return model
