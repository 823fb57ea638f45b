"""Spiking layers a converted model is made of: :class:`SpikeEncoder` and :class:`SpikingLinear`.

A linear layer driven by binary spikes with layer weights ``w_i`` and a sign flag computes exactly
``W @ x_hat`` (accumulates of ``w_i``-weighted, sign-flipped synaptic weights), so running the
dense layer on the decoded value ``x_hat`` is the same arithmetic; the spike counts, which set the
energy, are measured from outside by ``spikelm.energy`` hooks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import EncodingConfig
from ..ops.backend import Backend
from ..ops.linear import Linear, linear
from .encoding import check_scale, mhse_a_max, mhse_decode, mhse_simulate
from .lsq import mhse_learned_step

__all__ = ["SpikeEncoder", "SpikingLinear"]


class SpikeEncoder(nn.Module):
    """Encode a tensor into spikes and return the value the spikes decode to.

    ``scale`` is a buffer (saved with the checkpoint): shape () per tensor or (C,) per channel,
    always float32: casting the model (``.to(torch.bfloat16)``, ``.half()``) leaves it alone, and
    the encoding computes in float32/float64 and returns the input's dtype. Loading refuses a
    scale that is not finite and > 0 (checked here once, not on every forward).
    ``method``: ``closed`` (fast, exact closed form) or ``sim`` (step-by-step IF cascade; slow,
    the reference). Both give bit-identical outputs.

    ``straight_through`` (fine-tuning): with gradients enabled the forward value is unchanged and
    gradients pass to the input (straight through inside the representable range, zero where
    clipped) and, once :meth:`learn_scale` has made the scale a parameter, to the scale (LSQ, with
    the gradient scale ``grad_scale``: None for LSQ's ``1 / sqrt(N Q_p)``; see
    :func:`~spikelm.spiking.lsq.mhse_learned_step`).

    ``levels`` is an observation point (``nn.Identity``, no weights): the closed form's one-step
    fast path calls it with the integer levels whose bits are the spikes (see
    :func:`~spikelm.spiking.encoding.mhse_decode`), so a counter's hook on it reads what the
    encoder computed instead of computing it again. The model ignores what it returns; other paths
    do not call it.
    """

    def __init__(self, enc: EncodingConfig, channels: int):
        super().__init__()
        self.encoding = enc.encoding
        self.T, self.layers, self.base, self.n_int, self.init_half = enc.T, enc.layers, enc.base, enc.n_int, enc.init_half
        self.register_buffer("scale", torch.ones(channels if enc.granularity == "channel" else ()))
        self.method = "closed"
        self.straight_through = False
        self.grad_scale: float | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: check_scale(module.scale))
        self.levels = nn.Identity()

    backend: Backend = None  # the decoding's implementation (spikelm.ops.set_backend)

    def _apply(self, fn, recurse=True):
        # Module.to/half/bfloat16 all go through _apply: keep the scale's float32 value and take
        # only the new device (a scale rounded to bfloat16 moves every decision threshold).
        scale = self.scale.detach()  # the float32 values (a Parameter's data is replaced, not this)
        super()._apply(fn, recurse)
        if self.scale.dtype != scale.dtype and scale.dtype == torch.float32:
            kept = scale.to(self.scale.device)
            if isinstance(self.scale, nn.Parameter):
                self.scale.data = kept  # the same Parameter object (an optimizer may hold it)
            else:
                self.scale = kept
        return self

    def learn_scale(self, enabled: bool = True) -> SpikeEncoder:
        """Make the scale a trainable parameter (``enabled``) or a buffer again, keeping its value,
        its float32 dtype and its ``state_dict`` key (``scale``), so a fine-tuned model saves and
        loads as any converted one."""
        value = self.scale.detach().clone()
        learning = isinstance(self.scale, nn.Parameter)
        if enabled and not learning:
            del self._buffers["scale"]
            self.scale = nn.Parameter(value)
        elif not enabled and learning:
            del self._parameters["scale"]
            self.register_buffer("scale", value)
        return self

    @property
    def a_max(self) -> float:
        return 1.0 if self.encoding == "rate" else mhse_a_max(self.layers, self.base, self.n_int)

    def encode_args(self) -> dict:
        """Keyword arguments of the encoding functions for this site (rate = one layer of weight 1)."""
        if self.encoding == "rate":
            return dict(T=self.T, layers=1, base=2.0, n_int=1, init_half=self.init_half)
        return dict(T=self.T, layers=self.layers, base=self.base, n_int=self.n_int, init_half=self.init_half)

    def forward(self, x: Tensor) -> Tensor:
        if self.method == "sim":
            x_hat, _, _, _ = mhse_simulate(x, self.scale, **self.encode_args())
            return x_hat
        args = self.encode_args()
        del args["base"]
        if self.straight_through and torch.is_grad_enabled():
            return mhse_learned_step(x, self.scale, **args, grad_scale=self.grad_scale)
        return mhse_decode(x, self.scale, **args, backend=self.backend,
                           on_levels=getattr(self, "levels", None))  # None: a module pickled before it existed

    def extra_repr(self) -> str:
        return f"{self.encoding}, T={self.T}, layers={self.layers}, method={self.method}, scale={tuple(self.scale.shape)}"


class SpikingLinear(Linear):
    """``nn.Linear`` whose input is spike-encoded first; same ``weight`` name, plus ``encoder.scale``."""

    def __init__(self, in_features: int, out_features: int, enc: EncodingConfig):
        super().__init__(in_features, out_features, bias=False)
        self.encoder = SpikeEncoder(enc, in_features)

    def forward(self, x: Tensor) -> Tensor:
        # spikelm.ops.linear: F.linear, except bf16/fp16 products of many rows on CPUs without
        # native low-precision GEMMs (then through float32: the same arithmetic, faster)
        return linear(self.encoder(x), self.weight, self.bias, self.backend)
