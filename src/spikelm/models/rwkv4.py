"""RWKV-4 (BlinkDL, 2022-23), one module for parallel and recurrent use.

SpikeGPT's architecture without spikes: the same blocks and parameter names, with a real-valued
embedding and each sub-layer's output added to the residual stream directly (no LIF neuron). The
ANN counterpart of :mod:`spikelm.models.spikegpt`, and the model of BlinkDL's ``RWKV-4-Pile-*``
releases. Read top to bottom: TimeMix (token shift, WKV4 recurrence, receptance gate), ChannelMix
(squared-ReLU FFN with a receptance gate), Block, RWKV4.

    x = emb[idx]
    x = ln0(x)                                    block 0 only
    for each block:
        x = x + TimeMix( ln1(x) )                 sigmoid(r) * WKV(k, v), then ``output``
        x = x + ChannelMix( ln2(x) )              sigmoid(r) * value(relu(key(x))^2)
    logits = head( ln_out(x) )

Parameter names and shapes are the official ones (RWKV-LM ``RWKV-v4/src/model.py``, the ``.pth``
files released as ``RWKV-4-*``), so a released checkpoint loads with ``strict=True``::

    emb.weight [V, C]                         blocks.0.ln0.{weight,bias} [C] (block 0 only)
    blocks.i.ln1 / ln2.{weight,bias} [C]      blocks.i.att.time_decay [A], time_first [A]
    blocks.i.att.time_mix_{k,v,r} [1, 1, C]   blocks.i.att.{key,value,receptance}.weight [A, C]
    blocks.i.att.output.weight [C, A]         blocks.i.ffn.time_mix_{k,r} [1, 1, C]
    blocks.i.ffn.key.weight [F, C]            blocks.i.ffn.value.weight [C, F]
    blocks.i.ffn.receptance.weight [C, C]     ln_out.{weight,bias} [C], head.weight [V, C]

Conventions worth knowing (the ones an RWKV-5/6 reader gets wrong):

* Token shift mixes the *current* token with weight ``time_mix``: ``x * m + x_prev * (1 - m)``
  (RWKV-5/6's ``time_maa`` is the weight of the difference ``x_prev - x``).
* The decay is ``w = -exp(time_decay)`` per channel, the bonus of the current token is
  ``time_first`` used as is (``u``), and WKV divides by the decayed sum of ``exp(k)``: see
  :mod:`spikelm.ops.wkv4` (fp32 whatever the model's dtype, fp64 for an fp64 model).
* No GroupNorm after WKV, no gate: ``out = output(sigmoid(r) * wkv)``.

Recurrent state (one :class:`LayerState` per block, batch first): the last ``ln1`` output, the
WKV triple ``(aa, bb, pp)`` in fp32, and the last ``ln2`` output. Feeding a sequence at once or
token by token with the state carried gives the same logits.

The ``rwkv`` pip package's inference (strategy ``cpu fp32``) computes the same logits
(``tests/models/test_rwkv4.py``). Its fp16 strategies halve the residual stream every 6 blocks
(``RESCALE_LAYER``), which LayerNorm makes invisible for this model; nothing here needs it.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from ..config import RWKV4Config
from ..ops.backend import Backend
from ..ops.wkv4 import EMPTY_PP, wkv4
from .init import head_gain, orthogonal_like, tall_gain
from .optable import OpRow

__all__ = ["RWKV4", "LayerState", "RWKV4Config", "build_rwkv4"]


class LayerState(NamedTuple):
    """Recurrent state of one block: shifts (B, C) in the model dtype, WKV sums (B, A) in fp32."""

    att_shift: Tensor
    aa: Tensor
    bb: Tensor
    pp: Tensor
    ffn_shift: Tensor


State = list[LayerState]


# The pieces below are SpikeGPT's too (spikelm.models.spikegpt builds on this file: its time mix,
# channel mix and block are these with spiking neurons added).
def token_shift(x: Tensor, last: Tensor) -> Tensor:
    """The previous token's vector at every position: (B, T, C), with ``last`` (B, C) in front."""
    return torch.cat((last.unsqueeze(1), x[:, :-1]), dim=1)


def last_token(x: Tensor) -> Tensor:
    """The token-shift state: x[:, -1] (B, C) as its own B*C buffer (a view would keep the whole
    (B, T, C) LayerNorm output alive with the state). With T = 1 the view is already that small."""
    last = x[:, -1]
    return last if x.shape[1] == 1 else last.clone(memory_format=torch.contiguous_format)


def token_mix(x: Tensor, xx: Tensor, m: Tensor) -> Tensor:
    """RWKV-4 token shift: weight ``m`` on the current token, ``1 - m`` on the previous one."""
    return x * m + xx * (1 - m)


def wkv_dtype(dtype: torch.dtype) -> torch.dtype:
    """WKV runs in fp32 (exp of keys), fp64 when the model is fp64 (exact comparisons in tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------ time mixing
class TimeMix(nn.Module):
    backend: Backend = None  # WKV's implementation (spikelm.ops.set_backend)

    def __init__(self, cfg: RWKV4Config, layer_id: int) -> None:
        super().__init__()
        C, A = cfg.n_embd, cfg.dim_att
        self.layer_id = layer_id
        self.time_decay = nn.Parameter(torch.zeros(A))  # w = -exp(time_decay): log decay per token
        self.time_first = nn.Parameter(torch.zeros(A))  # u: bonus of the current token
        self.time_mix_k = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.ones(1, 1, C))
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.receptance = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)

    ENERGY_ORDER = ("mix", "key", "value", "receptance", "wkv", "gate_act", "output")

    def energy_ops(self) -> dict[str, OpRow]:
        """Per token beyond the Linear children (as SpikeGPT's time mixing, the same arithmetic):
        three mixes ``x m + xx (1 - m)`` 2C mul + C add each; WKV-4 per channel 12 add, 6 mul,
        5 special; ``sigmoid(r) * y`` A special + A mul."""
        C, A = self.key.in_features, self.key.out_features
        return {"mix": OpRow("elementwise", {"mul": 6 * C, "add": 3 * C}),
                "wkv": OpRow("wkv", {"add": 12 * A, "mul": 6 * A, "special": 5 * A}),
                "gate_act": OpRow("elementwise", {"special": A, "mul": A})}

    def forward(
        self, x: Tensor, shift: Tensor, wkv_state: tuple[Tensor, Tensor, Tensor], wkv_impl: str = "auto",
        pre_proj: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
        """x (B, T, C) = ln1 output; shift (B, C) = previous ln1 output -> (out (B, T, C), new shift, new WKV state).

        ``pre_proj`` (SpikeGPT's ``lif_site="pre_proj"``): applied to ``sigmoid(r) * wkv`` before ``output``."""
        xx = token_shift(x, shift)  # (B, T, C)
        k = self.key(token_mix(x, xx, self.time_mix_k))  # (B, T, A)
        v = self.value(token_mix(x, xx, self.time_mix_v))
        r = self.receptance(token_mix(x, xx, self.time_mix_r))

        dt = wkv_dtype(x.dtype)
        w = -torch.exp(self.time_decay.to(dt))  # (A,) log decay, < 0
        # k, v as they come (bf16 under autocast): the op computes in fp32 (fp64 for fp64) and gives y in v's dtype
        y, wkv_state = wkv4(w, self.time_first.to(dt), k, v, wkv_state, impl=wkv_impl, backend=self.backend)  # (B, T, A)
        g = torch.sigmoid(r) * y.to(r.dtype)  # the receptance gate
        return self.output(g if pre_proj is None else pre_proj(g)), last_token(x), wkv_state


# ----------------------------------------------------------------------------- channel mixing
class ChannelMix(nn.Module):
    def __init__(self, cfg: RWKV4Config, layer_id: int) -> None:
        super().__init__()
        C, Fh = cfg.n_embd, cfg.dim_ffn
        self.layer_id = layer_id
        self.time_mix_k = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.ones(1, 1, C))
        self.key = nn.Linear(C, Fh, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Fh, C, bias=False)

    ENERGY_ORDER = ("mix", "key", "act", "receptance", "value")

    def energy_ops(self) -> dict[str, OpRow]:
        """Per token: two mixes 2 x (2C mul + C add); relu F add, square F mul, sigmoid C special,
        the product C mul."""
        Fh, C = self.key.out_features, self.key.in_features
        return {"mix": OpRow("elementwise", {"mul": 4 * C, "add": 2 * C}),
                "act": OpRow("elementwise", {"add": Fh, "mul": Fh + C, "special": C})}

    def forward(self, x: Tensor, shift: Tensor, pre_proj: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """x (B, T, C) = ln2 output; shift (B, C) = previous ln2 output -> (out (B, T, C), new shift).

        ``pre_proj`` (SpikeGPT's ``lif_site="pre_proj"``): applied to the hidden ``relu(k)^2`` before ``value``."""
        xx = token_shift(x, shift)
        k = torch.relu(self.key(token_mix(x, xx, self.time_mix_k))) ** 2  # (B, T, F)
        if pre_proj is not None:
            k = pre_proj(k)
        r = torch.sigmoid(self.receptance(token_mix(x, xx, self.time_mix_r)))  # (B, T, C)
        return r * self.value(k), last_token(x)


# ------------------------------------------------------------------------------------- block
class Block(nn.Module):
    """Pre-norm residual block: ``x += TimeMix(ln1 x)``; ``x += ChannelMix(ln2 x)``."""

    TIME_MIX: type[nn.Module] = TimeMix  # the sub-layers' classes (SpikeGPT's block names its own)
    CHANNEL_MIX: type[nn.Module] = ChannelMix

    def __init__(self, cfg: RWKV4Config, layer_id: int) -> None:
        super().__init__()
        C = cfg.n_embd
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)  # normalises the embedding, block 0 only
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = self.TIME_MIX(cfg, layer_id)
        self.ffn = self.CHANNEL_MIX(cfg, layer_id)

    ENERGY_ORDER = ("residual",)
    ENERGY_WHEN = "post"

    def energy_ops(self) -> dict[str, OpRow]:
        """Per token: the two residual adds, 2C add."""
        return {"residual": OpRow("residual", {"add": 2 * self.ln1.normalized_shape[0]})}

    def forward(self, x: Tensor, state: LayerState, wkv_impl: str = "auto") -> tuple[Tensor, LayerState]:
        att_shift, aa, bb, pp, ffn_shift = state
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        # Token shift works on the LayerNorm output: the state keeps the last ln1 / ln2 outputs.
        dx, att_shift, (aa, bb, pp) = self.att(self.ln1(x), att_shift, (aa, bb, pp), wkv_impl)
        x = x + dx
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        x = x + dx
        return x, LayerState(att_shift, aa, bb, pp, ffn_shift)


# ------------------------------------------------------------------------------------- model
class RWKV4(nn.Module):
    """RWKV-4 language model: ``forward(idx, state=None, last_only=False) -> (logits, state)``."""

    def __init__(self, cfg: RWKV4Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wkv_impl = "auto"  # wkv4: "naive" | "parallel" | "triton" | "auto" (Triton on CUDA, else naive for T == 1)

    @property
    def tokenizer_name(self) -> str:
        return self.cfg.tokenizer

    def initial_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """Fresh state: zero shifts and empty WKV sums (``aa = bb = 0``, ``pp = EMPTY_PP``)."""
        device = device or self.emb.weight.device
        dtype = dtype or self.emb.weight.dtype
        B, C, A = batch_size, self.cfg.n_embd, self.cfg.dim_att
        wdt = wkv_dtype(dtype)
        return [
            LayerState(
                torch.zeros(B, C, device=device, dtype=dtype),
                torch.zeros(B, A, device=device, dtype=wdt),
                torch.zeros(B, A, device=device, dtype=wdt),
                torch.full((B, A), EMPTY_PP, device=device, dtype=wdt),
                torch.zeros(B, C, device=device, dtype=dtype),
            )
            for _ in self.blocks
        ]

    def forward(self, idx: Tensor, state: State | None = None, last_only: bool = False) -> tuple[Tensor, State]:
        """idx (B, T) int64 -> logits (B, T, V) (or (B, 1, V) with ``last_only``), new state."""
        if state is None:
            state = self.initial_state(idx.shape[0], idx.device)
        x = self.emb(idx)  # (B, T, C)
        new_state: State = []
        for blk, s in zip(self.blocks, state):
            x, s = blk(x, s, self.wkv_impl)
            new_state.append(s)
        if last_only:
            x = x[:, -1:]  # generation needs only the last position: skip the head elsewhere
        logits = self.head(self.ln_out(x))  # (B, T, V)
        return logits, new_state

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> RWKV4:
        """Initialise for training from scratch: RWKV-LM v4's scheme.

        * Embedding uniform in +-1e-4; LayerNorms weight 1, bias 0.
        * Decay ``time_decay[h] = -5 + 8 (h/(A-1))^(0.7 + 1.3 l/(L-1))`` (slow to fast channels,
          more slow ones in deeper blocks); bonus ``time_first = ln 0.3 + 0.5 * zigzag``.
        * Token-shift mixes ``(c/C)^(1 - l/L)`` (k, and the FFN's k and r), plus ``0.3 l/(L-1)`` for
          v, and exponent halved for r: the first block mixes in more of the previous token.
        * Zero: ``att.key``, ``att.receptance``, ``att.output``, ``ffn.receptance``, ``ffn.value``,
          so every block starts as the identity.
        * Normal with the entry variance of the code's orthogonal init (gain 1, times
          ``sqrt(rows/cols)`` for a tall matrix) for ``att.value`` and ``ffn.key``; ``head`` with
          gain ``0.5 sqrt(V/C)``.
        """
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        cfg = self.cfg
        L, C, A, V = cfg.n_layer, cfg.n_embd, cfg.dim_att, cfg.vocab_size

        def ortho_like(w: Tensor, scale: float) -> None:
            # RWKV-LM: orthogonal_(w, gain=tall_gain(w) * scale), drawn as a normal of that variance.
            orthogonal_like(w, tall_gain(w) * scale, g)

        self.emb.weight.copy_((torch.rand(self.emb.weight.shape, generator=g) * 2 - 1) * 1e-4)
        orthogonal_like(self.head.weight, head_gain(V, C), g)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        h = torch.arange(A, dtype=torch.float32)
        zigzag = ((h + 1) % 3 - 1) * 0.5
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        for i, blk in enumerate(self.blocks):
            r01 = i / max(1, L - 1)
            r10 = 1.0 - i / L
            att, ffn = blk.att, blk.ffn
            att.time_decay.copy_(-5 + 8 * (h / max(1, A - 1)) ** (0.7 + 1.3 * r01))
            att.time_first.copy_(math.log(0.3) + zigzag)
            att.time_mix_k.copy_(ddd**r10)
            att.time_mix_v.copy_(ddd**r10 + 0.3 * r01)
            att.time_mix_r.copy_(ddd ** (0.5 * r10))
            ffn.time_mix_k.copy_(ddd**r10)
            ffn.time_mix_r.copy_(ddd**r10)
            for lin in (att.key, att.receptance, att.output, ffn.receptance, ffn.value):
                lin.weight.zero_()
            ortho_like(att.value.weight, 1.0)
            ortho_like(ffn.key.weight, 1.0)
        return self


def build_rwkv4(cfg_dict: dict) -> RWKV4:
    """Builder for spikelm-folder checkpoints and training configs (``kind: rwkv4``)."""
    return RWKV4(RWKV4Config.from_dict(cfg_dict))
