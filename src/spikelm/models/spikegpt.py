"""SpikeGPT (Zhu, Zhao, Li, Eshraghian 2023): a spiking RWKV-4 language model trained directly.

Read top to bottom: the binary embedding spike, token shift, the spiking RWKV (time mixing,
paper sec. 3.4, eq. 4 and 10-12), the spiking receptance FFN (SRFFN, sec. 3.5, eq. 14), the block
with its two LIF neurons (eq. 13), and the model. Its config, ``SpikeGPTConfig``, and the named
shapes ``SPIKEGPT_PRESETS`` live in :mod:`spikelm.config` with the other configs.

Architecture (paper sec. 3, checked against the authors' code, ridgerchu/SpikeGPT ``src/model.py``
and ``src/model_run.py``)::

    x = H(emb[idx])                               binary embedding (sec. 3.2): spikes {0, 1}
                                                  (optional: cfg.binary_embedding)
    x = ln0(x)                                    block 0 only
    for each block:
        x = x + LIF1( SRWKV( ln1(x) ) )           spiking RWKV, then a LIF neuron per channel
        x = x + LIF2( SRFFN( ln2(x) ) )           spiking receptance FFN, then a LIF neuron
    logits = head( ln_out(x) )

**What exactly spikes.** Three kinds of tensors are binary: the embedding output (before ``ln0``)
and the outputs of ``lif1`` and ``lif2`` in every block, i.e. what each sub-layer *adds to the
residual stream*. The residual stream itself is ``ln0(spikes) + sum of spikes``: a real-valued,
integer-stepped sum, not a spike train. Each sub-layer reads it through a LayerNorm and a token
shift, so the inputs of the linear layers (key, value, receptance, FFN key) are real numbers, and
so are ``k``, ``v``, ``sigmoid(r)``, the WKV output and the squared-ReLU hidden layer. This is what
the paper's Fig. 1 draws (Spiking Neuron -> Spike Output at the end of each sub-layer) and what
the released code does; the paper's "pure binary activations" refers to these sub-layer outputs.

**Time axis.** As in the paper (sec. 3.4.3), spiking time is the token axis: the LIF membrane of
token t is carried to token t+1. There is no separate inner simulation time.

Where paper and public code differ (we follow the code unless a config option says otherwise):

* Token shift direction. Eq. (2) writes ``ZeroPad[0,0,-1,1](X)`` and its footnote reads it as
  "clip the top row, zero-pad the bottom row", which would give each token the *next* token's
  vector (a causal language model would see its target). The code pads the top and clips the
  bottom (``nn.ZeroPad2d((0, 0, 1, -1))``): each token sees the *previous* one. We use the previous
  token; the recurrent state carries the last one.
* Token-shift mix. Eq. (2) gives one fixed ``W_shift = (i/E)^(n/N)``, ``i = 1..E``, mixing
  ``W_shift * X + (1 - W_shift) * X_shifted``. The code (like every RWKV-4) learns three separate
  mixes ``time_mix_{k,v,r}`` for the time mixing and two ``time_mix_{k,r}`` for the FFN,
  initialised to ``(i/E)^(1 - n/N)`` with ``i = 0..E-1`` (plus offsets for v and r) -- note the
  exponent runs the opposite way over depth. ``token_shift_init="paper"`` initialises all five
  mixes of block n (n = 1..N, 1-based like i; with 0-based n the first block would get
  ``W_shift = 1``, i.e. no shift at all) to the paper's ``W_shift``; ``"official"`` uses the code's
  values. ``learnable_shift=False`` (the paper: ``W_shift`` is a precomputed formula, nothing says
  it is trained) freezes the mixes (they stay ``nn.Parameter``s with ``requires_grad=False`` so the
  state dict keeps the released names); ``True`` trains them as the code does.
* WKV bonus. Eq. (10)-(12) as printed have no bonus for the current token; eq. (7)-(8) do: the
  last column of W, ``W_f = ln(0.3)``, weighs the current token separately. That is the released
  ``time_first`` (initialised to ``ln 0.3`` plus a small zigzag in the code), the ``u`` of RWKV-4's
  WKV. Eq. (10) is the special case ``u = -w``. We use RWKV-4's WKV with a free per-channel ``u``,
  and the per-channel decay ``w = -exp(time_decay)`` (eq. 5-8 describe the same decay as a
  positional matrix for the convolution form).
* Normalisation. Fig. 1 draws "Add & Norm" after each sub-layer (post-norm); the code and the
  released checkpoints are pre-norm (``ln1``/``ln2`` before each sub-layer, ``ln0`` on the
  embedding, ``ln_out`` before the head). We follow the code.
* LIF (eq. 13): the code's SpikingJelly ``MultiStepLIFNode(tau=2, v_threshold=1, v_reset=0)``,
  i.e. :class:`~spikelm.spiking.neurons.LIFNeuron` with ``beta = 1/tau = 0.5`` (see its docstring
  for how eq. 13 is read), hard reset to 0, ArcTan surrogate with alpha = 2 (eq. 1), gradient
  through the reset not detached (SpikingJelly's default).
* Recurrent inference. The code's inference file (``src/model_run.py``, which ``run.py`` uses
  with the released models) departs from its training model (``src/model.py``) in two ways that
  change the output; both are config options here, off for models spikelm trains and set to the
  run code's values when a released checkpoint is loaded
  (:mod:`spikelm.checkpoints.spikegpt`):

  - ``binary_embedding``: the run code binarises the embedding only when ``vocab_size == 77``
    (the enwik8 character model); every other vocabulary, the released 216M NeoX model included,
    feeds the real-valued embedding into ``ln0``. The training model always binarises.
  - ``rescale_every``: the run code's ``RWKV_RESCALE_LAYER = 6`` divides ``att.output`` and
    ``ffn.value`` of block i by ``2^(i // 6)`` and halves the residual stream after every 6th
    block. For RWKV-4 (an fp16 overflow guard) this changes nothing; here the LIF neurons see
    inputs 2x / 4x smaller in blocks 6-11 / 12-17 and spike less.

  Its RNN runner gives each layer its own two ``LIFNode``s (earlier versions shared two across
  layers) and carries their membranes from token to token, never resetting them between prompts.
  Here every block owns its two neurons and their membranes are part of the recurrent state, so
  feeding a sequence at once or token by token gives the same result.
* Not in the paper, for the decomposition and the recipe search (docs/results.md, "SpikeGPT
  decomposition"): ``lif=False`` replaces both neurons of every block by the identity (an ablation:
  the sub-layers add real values); ``lif_site="pre_proj"`` moves them onto the inputs of the last
  projection of each sub-layer (``sigmoid(r) * wkv`` before ``att.output``, ``relu(k)^2`` before
  ``ffn.value``), so spikes drive the weights and the residual stream is real-valued. Neither
  changes the parameters; with ``pre_proj`` the energy counters count no residual spike adds (the
  output projections then receive spikes but are still counted as dense MACs, an upper bound).
* Dropout: the code applies ``Dropout(0.03)`` to the residual stream after every block during
  training. ``dropout`` (default 0) does the same.
* Not implemented: the code's ``RWKV-ffnPre`` variant (block 0 uses an FFN instead of time mixing)
  and its ``RWKV_HEAD_QK_DIM > 0`` copy head (0 in the code and in the releases).

Parameter names and shapes are those of the released checkpoints (the RWKV-4 layout), so they
load with ``strict=True`` (see :mod:`spikelm.checkpoints.spikegpt`)::

    emb.weight [V, C]                         blocks.0.ln0.{weight,bias} [C] (block 0 only)
    blocks.i.ln1 / ln2.{weight,bias} [C]      blocks.i.att.time_decay [C], time_first [C]
    blocks.i.att.time_mix_{k,v,r} [1, 1, C]   blocks.i.att.{key,value,receptance,output}.weight [C, C]
    blocks.i.ffn.time_mix_{k,r} [1, 1, C]     blocks.i.ffn.key.weight [4C, C], value [C, 4C],
    ln_out.{weight,bias} [C]                  blocks.i.ffn.receptance.weight [C, C]
    head.weight [V, C]

The neurons hold no parameters or buffers, so nothing else is in the state dict.

**Observation.** Spike sites are modules whose forward output is the spike tensor (``emb_spike``)
or a ``(spikes, membrane)`` tuple whose first element is the spike tensor (``blocks.i.lif1``,
``blocks.i.lif2``, :class:`LIFNeuron` instances). :meth:`SpikeGPT.spike_sites` lists them; energy
and spike counters attach forward hooks there. The model itself counts nothing.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ..config import SPIKEGPT_PRESETS, SpikeGPTConfig  # noqa: F401 (re-exported)
from ..ops.wkv4 import EMPTY_PP
from ..spiking.neurons import LIFNeuron
from ..spiking.surrogate import ArcTan
from . import rwkv4
from .optable import OpRow
from .rwkv4 import wkv_dtype

__all__ = ["SpikeGPTConfig", "SPIKEGPT_PRESETS", "SpikeGPT", "LayerState", "BinarySpike", "build_spikegpt"]


# ------------------------------------------------------------------------------------ state
class LayerState(NamedTuple):
    """Recurrent state of one block, every tensor (B, C), batch first.

    ``att_shift`` / ``ffn_shift``: the last ``ln1`` / ``ln2`` output (token shift).
    ``aa``, ``bb``, ``pp``: the WKV numerator, denominator and their running max exponent (fp32).
    ``att_v`` / ``ffn_v``: membranes of ``lif1`` / ``lif2`` after their last reset, (B, C); with
    ``lif_site="pre_proj"`` ``ffn_v`` is (B, 4C) (``lif2`` sits on the FFN hidden layer); with
    ``lif=False`` they stay zero.
    """

    att_shift: Tensor
    aa: Tensor
    bb: Tensor
    pp: Tensor
    att_v: Tensor
    ffn_shift: Tensor
    ffn_v: Tensor


State = list[LayerState]


# ----------------------------------------------------------------------------- binary embedding
class BinarySpike(nn.Module):
    """Sec. 3.2: ``H(x) = (x >= 0)`` forward, ArcTan surrogate derivative backward.

    The paper: "The conversion is performed using a Heaviside function for feed-forward
    propagation ... the arctangent function ... is applied as a 'surrogate gradient' for backward
    propagation" (eq. 1). With ``alpha = 2`` the backward factor is ``1 / (1 + (pi x)^2)``, which is
    1 at x = 0: embedding entries initialised near 0 get the full gradient. The threshold is 0
    (the code applies SpikingJelly's ``ATan()`` to the embedding output); ``H(0) = 1``.
    Stateless; forward output is the spike tensor (a spike site for hooks).
    """

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        self.surrogate = ArcTan(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return self.surrogate(x)

    def energy_neuron_ops(self, numel: int, spikes: int) -> dict[str, int]:
        """A binary embedding spike is one comparison with 0 per value: 1 add."""
        return {"add": numel}

    def extra_repr(self) -> str:
        return f"surrogate={self.surrogate!r}"


# ------------------------------------------------------------------------------ spiking RWKV
def _shift_mix_init(cfg: SpikeGPTConfig, layer_id: int) -> dict[str, Tensor]:
    """Initial token-shift mixes of block ``layer_id`` (0-based), each (1, 1, C)."""
    C, N = cfg.n_embd, cfg.n_layer
    if cfg.token_shift_init == "paper":
        i = torch.arange(1, C + 1, dtype=torch.float32) / C  # i/E, i = 1..E
        w = (i ** ((layer_id + 1) / N)).view(1, 1, C)  # block n = layer_id + 1 of N
        return {"att_k": w, "att_v": w, "att_r": w, "ffn_k": w, "ffn_r": w}
    # RWKV-4 / SpikeGPT code: i = 0..E-1, exponent 1 - n/N with 0-based n.
    i = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
    r01 = layer_id / max(1, N - 1)
    r10 = 1.0 - layer_id / N
    return {
        "att_k": i**r10,
        "att_v": i**r10 + 0.3 * r01,
        "att_r": i ** (0.5 * r10),
        "ffn_k": i**r10,
        "ffn_r": i**r10,
    }


class SpikingRWKV(rwkv4.TimeMix):
    """Spiking RWKV time mixing (sec. 3.4), before its LIF neuron: RWKV-4's time mix
    (:class:`spikelm.models.rwkv4.TimeMix`, the same parameters and arithmetic) with SpikeGPT's
    initial token-shift mixes, frozen unless ``cfg.learnable_shift``.

    ``r, k, v`` are linear maps of the token-shifted input (eq. 4: R = X M_R, K = X M_K, V = X M_V);
    the WKV recurrence (eq. 10-12 with the bonus of eq. 7-8) averages past values weighted by
    ``exp(k)`` and a per-channel exponential decay; ``sigmoid(r)`` gates it and ``output`` projects
    back to the residual width. Returns the real-valued ``Y`` that eq. 13 feeds to the LIF neuron;
    with ``lif_site="pre_proj"`` the block passes its neuron as ``pre_proj`` (applied to the gated
    value before ``output``).
    """

    def __init__(self, cfg: SpikeGPTConfig, layer_id: int) -> None:
        super().__init__(cfg, layer_id)
        mixes = _shift_mix_init(cfg, layer_id)
        with torch.no_grad():
            for name in ("k", "v", "r"):
                p = getattr(self, f"time_mix_{name}")
                p.copy_(mixes[f"att_{name}"])
                p.requires_grad_(cfg.learnable_shift)


class SRFFN(rwkv4.ChannelMix):
    """Spiking receptance feed-forward network (sec. 3.5, eq. 14), before its LIF neuron: RWKV-4's
    channel mix (:class:`spikelm.models.rwkv4.ChannelMix`) with SpikeGPT's initial mixes.

    ``Y' = sigmoid(M_P x_r) * M_S(ReLU(M_G x_k)^2)`` on the token-shifted ``ln2`` output, hidden
    size ``ffn_mult * C`` (4C). Released names: M_P = ``receptance``, M_G = ``key``, M_S = ``value``.
    """

    ENERGY_ORDER = ("mix", "key.encode", "key", "act", "receptance.encode", "receptance", "value.encode", "value")

    def __init__(self, cfg: SpikeGPTConfig, layer_id: int) -> None:
        super().__init__(cfg, layer_id)
        mixes = _shift_mix_init(cfg, layer_id)
        with torch.no_grad():
            for name in ("k", "r"):
                p = getattr(self, f"time_mix_{name}")
                p.copy_(mixes[f"ffn_{name}"])
                p.requires_grad_(cfg.learnable_shift)


# ------------------------------------------------------------------------------------- block
class Block(rwkv4.Block):
    """Pre-norm residual block: ``x += LIF1(SRWKV(ln1 x))``; ``x += LIF2(SRFFN(ln2 x))``: RWKV-4's
    block (``ln0`` on the (binary) embedding in block 0, ``ln1``, ``ln2``, ``att``, ``ffn``) with a
    LIF neuron on each sub-layer's output."""

    TIME_MIX = SpikingRWKV
    CHANNEL_MIX = SRFFN

    def __init__(self, cfg: SpikeGPTConfig, layer_id: int) -> None:
        super().__init__(cfg, layer_id)
        # Eq. 13 along the token axis (dim 1 of (B, T, C)); each call returns (spikes, last membrane).
        # cfg.lif False (an ablation): no neurons, the sub-layer outputs enter the residual as they are.
        lif = dict(beta=cfg.lif_beta, threshold=cfg.lif_threshold, reset="zero", v_reset=0.0, time_dim=1)
        self.lif1: Optional[LIFNeuron] = LIFNeuron(surrogate=ArcTan(cfg.surrogate_alpha), **lif) if cfg.lif else None
        self.lif2: Optional[LIFNeuron] = LIFNeuron(surrogate=ArcTan(cfg.surrogate_alpha), **lif) if cfg.lif else None
        self.lif_site = cfg.lif_site
        self.drop = nn.Dropout(cfg.dropout)
        # The public run code's RWKV_RESCALE_LAYER (cfg.rescale_every = k, 0 = off): it divides
        # att.output / ffn.value of block i by 2^(i // k) and halves x after every k-th block. We
        # scale the LIF inputs instead of the weights (the same numbers: powers of two are exact),
        # so the state dict stays the released one.
        k = cfg.rescale_every
        self.lif_in_scale = 2.0 ** -(layer_id // k) if k else 1.0
        self.halve_after = bool(k) and (layer_id + 1) % k == 0

    ENERGY_ORDER = ("residual",)
    ENERGY_WHEN = "post"

    def energy_ops(self) -> dict[str, OpRow]:
        """The residual adds of the LIF spikes: one accumulate per spike (the ANN: C add per token
        for each of the two). Where no spikes enter the residual (``lif=False``, or the LIFs sit
        before the projections), the two residual adds are dense: 2C adds per token."""
        C = self.ln1.normalized_shape[0]
        if self.lif1 is None or self.lif_site != "residual":
            return {"residual": OpRow("residual", {"add": 2 * C})}
        return {"residual": OpRow("residual", {"add": C}, spike_inputs=("lif1", "lif2"))}

    def forward(self, x: Tensor, state: LayerState, wkv_impl: str = "auto") -> tuple[Tensor, LayerState]:
        att_shift, aa, bb, pp, att_v, ffn_shift, ffn_v = state
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        # Token shift works on the LayerNorm output: the state keeps the last ln1 / ln2 outputs.
        if self.lif1 is not None and self.lif_site == "pre_proj":
            # The neurons spike the inputs of att.output / ffn.value; the sub-layers add real values.
            mem: dict[str, Tensor] = {}

            def spike1(g: Tensor) -> Tensor:
                s, mem["att"] = self.lif1(g, att_v)
                return s

            def spike2(h: Tensor) -> Tensor:
                s, mem["ffn"] = self.lif2(h, ffn_v)
                return s

            y, att_shift, (aa, bb, pp) = self.att(self.ln1(x), att_shift, (aa, bb, pp), wkv_impl, pre_proj=spike1)
            x = x + y * self.lif_in_scale
            y, ffn_shift = self.ffn(self.ln2(x), ffn_shift, pre_proj=spike2)
            x = self.drop(x + y * self.lif_in_scale)
            att_v, ffn_v = mem["att"], mem["ffn"]
        else:
            y, att_shift, (aa, bb, pp) = self.att(self.ln1(x), att_shift, (aa, bb, pp), wkv_impl)
            if self.lif_in_scale != 1.0:
                y = y * self.lif_in_scale
            if self.lif1 is not None:
                y, att_v = self.lif1(y, att_v)  # (B, T, C) spikes in {0, 1}
            x = x + y
            y, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
            if self.lif_in_scale != 1.0:
                y = y * self.lif_in_scale
            if self.lif2 is not None:
                y, ffn_v = self.lif2(y, ffn_v)
            x = self.drop(x + y)
        if self.halve_after:
            x = x / 2
        return x, LayerState(att_shift, aa, bb, pp, att_v, ffn_shift, ffn_v)


# ------------------------------------------------------------------------------------- model
class SpikeGPT(nn.Module):
    """SpikeGPT language model: ``forward(idx, state=None, last_only=False) -> (logits, state)``."""

    def __init__(self, cfg: SpikeGPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.emb_spike: Optional[BinarySpike] = BinarySpike(cfg.surrogate_alpha) if cfg.binary_embedding else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wkv_impl = "auto"  # wkv4: "naive" | "parallel" | "triton" | "auto" (Triton on CUDA, else naive for T == 1)

    @property
    def tokenizer_name(self) -> str:
        return self.cfg.tokenizer

    def spike_sites(self) -> Iterator[tuple[str, nn.Module]]:
        """(name, module) of every module whose forward output is spikes (or (spikes, membrane))."""
        if self.emb_spike is not None:
            yield "emb_spike", self.emb_spike
        for i, blk in enumerate(self.blocks):
            if blk.lif1 is not None:
                yield f"blocks.{i}.lif1", blk.lif1
                yield f"blocks.{i}.lif2", blk.lif2

    def initial_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """Fresh state: zero shifts, empty WKV sums (``pp = EMPTY_PP``), membranes at U_reset = 0."""
        device = device or self.emb.weight.device
        dtype = dtype or self.emb.weight.dtype
        B, C = batch_size, self.cfg.n_embd
        C_ffn_v = self.cfg.dim_ffn if self.cfg.lif and self.cfg.lif_site == "pre_proj" else C
        wdt = wkv_dtype(dtype)

        def z(dt: torch.dtype, width: int = C) -> Tensor:
            return torch.zeros(B, width, device=device, dtype=dt)

        return [
            LayerState(z(dtype), z(wdt), z(wdt), torch.full((B, C), EMPTY_PP, device=device, dtype=wdt), z(dtype), z(dtype),
                       z(dtype, C_ffn_v))
            for _ in self.blocks
        ]

    def forward(self, idx: Tensor, state: Optional[State] = None, last_only: bool = False) -> tuple[Tensor, State]:
        """idx (B, T) int64 -> logits (B, T, V) (or (B, 1, V) with ``last_only``), new state."""
        B, T = idx.shape
        if state is None:
            state = self.initial_state(B, idx.device)
        x = self.emb(idx)  # (B, T, C)
        if self.emb_spike is not None:
            x = self.emb_spike(x)  # (B, T, C) in {0, 1}
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
    def init_weights(self, seed: int | None = None) -> "SpikeGPT":
        """Initialise for training from scratch: the SpikeGPT code's scheme (RWKV-4's), documented.

        * Embedding: uniform in +-1e-4. With the binary embedding every entry sits where the ArcTan
          surrogate derivative is largest (1 at 0), and the first updates decide the sign, i.e. the
          spike pattern of each token.
        * Decay ``time_decay[c] = -5 + 8 (c/(C-1))^(0.7 + 1.3 l/(L-1))``: channels range from slow
          (-5: w = -exp(-5), the state keeps 99.3% per token) to fast (+3: keeps exp(-e^3) ~ 2e-9);
          the exponent grows with depth, so deeper blocks have more slow channels.
          Bonus ``time_first = ln 0.3 + 0.5 * zigzag`` (eq. 7's W_f = ln 0.3, de-symmetrised).
        * Token-shift mixes from ``token_shift_init`` (as at construction).
        * Zero: ``att.key``, ``att.receptance``, ``att.output``, ``ffn.receptance``, ``ffn.value``;
          each block starts by adding nothing (the LIF neurons see 0 and stay silent, but the
          surrogate still passes gradient: g'(0 - 1) = 1 / (1 + pi^2) ~ 0.09 for alpha = 2).
        * Normal with the entry variance of the code's orthogonal init (cheaper to draw for the
          50277 x 768 head; the singular values spread instead of all equal to the gain):
          std ``1/sqrt(C)`` for ``att.value`` (gain 1) and ``ffn.key`` (gain 2 = sqrt(4C/C) on a
          4C x C matrix), ``0.5/sqrt(C)`` for ``head``.
        * LayerNorms: weight 1, bias 0.
        """
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        cfg = self.cfg
        L, C = cfg.n_layer, cfg.n_embd

        def normal(w: Tensor, std: float) -> None:
            w.copy_(torch.randn(w.shape, generator=g) * std)

        self.emb.weight.copy_((torch.rand(self.emb.weight.shape, generator=g) * 2 - 1) * 1e-4)
        normal(self.head.weight, 0.5 / math.sqrt(C))
        c = torch.arange(C, dtype=torch.float32)
        zigzag = ((c + 1) % 3 - 1) * 0.5
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        for i, blk in enumerate(self.blocks):
            r01 = i / max(1, L - 1)
            att, ffn = blk.att, blk.ffn
            att.time_decay.copy_(-5 + 8 * (c / max(1, C - 1)) ** (0.7 + 1.3 * r01))
            att.time_first.copy_(math.log(0.3) + zigzag)
            mixes = _shift_mix_init(cfg, i)
            att.time_mix_k.copy_(mixes["att_k"])
            att.time_mix_v.copy_(mixes["att_v"])
            att.time_mix_r.copy_(mixes["att_r"])
            ffn.time_mix_k.copy_(mixes["ffn_k"])
            ffn.time_mix_r.copy_(mixes["ffn_r"])
            for lin in (att.key, att.receptance, att.output, ffn.receptance, ffn.value):
                lin.weight.zero_()
            normal(att.value.weight, 1.0 / math.sqrt(C))
            normal(ffn.key.weight, 1.0 / math.sqrt(C))
        return self


def build_spikegpt(cfg_dict: dict) -> SpikeGPT:
    """Builder for spikelm-folder checkpoints (``config.json`` with ``kind: spikegpt``)."""
    return SpikeGPT(SpikeGPTConfig.from_dict(cfg_dict))
