"""RWKV-7 ("Goose", x070), one module for parallel and recurrent use.

Read top to bottom: TimeMix (static token shift, low-rank decay / in-context learning rate /
value-residual / gate, the WKV7 delta-rule recurrence, GroupNorm, the r·k bonus), ChannelMix
(squared-ReLU FFN, no receptance gate in x070), Block, RWKV7.

Parameter names and shapes are the official ones (RWKV-LM ``RWKV-v7``, the ``.pth`` files released
as ``RWKV-x070-*``), so a released checkpoint loads with ``strict=True`` once the one mapping in
``spikelm.checkpoints.rwkv7`` has dropped layer 0's unused value-residual LoRA (see below):

    emb.weight [V, C]                     blocks.0.ln0.{weight,bias} [C] (layer 0 only)
    blocks.i.ln1 / ln2 [C]                blocks.i.att.x_{r,w,k,v,a,g} [1, 1, C]
    blocks.i.att.w0 [1, 1, C]             blocks.i.att.w1 [C, Dw]   w2 [Dw, C]   (decay)
    blocks.i.att.a0 [1, 1, C]             blocks.i.att.a1 [C, Da]   a2 [Da, C]   (in-context lr)
    blocks.i.att.v0 [1, 1, C]             blocks.i.att.v1 [C, Dv]   v2 [Dv, C]   (i >= 1)
    blocks.i.att.g1 [C, Dg]  g2 [Dg, C]   blocks.i.att.k_k, k_a [1, 1, C]   r_k [H, N]
    blocks.i.att.{receptance,key,value,output}.weight [C, C]   blocks.i.att.ln_x.{weight,bias} [C]
    blocks.i.ffn.x_k [1, 1, C]            blocks.i.ffn.key.weight [F, C]   value.weight [C, F]
    ln_out.{weight,bias} [C]              head.weight [V, C]

Value residual: layer 0's value ``v`` of each token is kept as ``v_first`` and every later layer
mixes it into its own value, ``v += (v_first - v) * sigmoid(v0 + (xv @ v1) @ v2)``. Official files
carry ``v0/v1/v2`` in layer 0 too, but no code reads them there (the ``rwkv`` package replaces them
by empty tensors); this module does not create them, so that no parameter goes without a gradient.
``v_first`` is per token and per forward call: it is not part of the recurrent state.

Recurrent state (one entry per layer, batch first, as RWKV-6): the last ``ln1`` output (B, C), the
WKV state (B, H, N, N) in fp32 indexed [key, value] (the official code stores it transposed,
[value, key]), and the last ``ln2`` output (B, C). Feeding a sequence in one call or token by token
with the state carried gives the same logits (tested), and the same as the ``rwkv`` package.

Spike-encoding sites: :data:`SPIKE_SITES` (and :meth:`RWKV7.spike_sites`) declare them as data.
Each full linear layer is an ``nn.Linear`` (a converter may swap it for a spiking linear with the
same parameter name); the low-rank matrices are raw parameters (official names ``w1`` ... ``g2``,
used with ``@``), so their inputs pass through parameter-free identity modules ``w1_in``,
``a1_in``, ``v1_in``, ``g1_in`` that a converter may replace by an encoder, as RWKV-6's ``maa_in``
/ ``decay_in``. The model itself knows nothing of spikes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RWKV7Config
from ..ops.wkv7 import wkv7
from .init import head_gain, orthogonal_like, tall_gain
from .optable import OpRow, matmul_row
from .quantized import dense

__all__ = ["RWKV7", "SPIKE_SITES", "Block", "ChannelMix", "LayerState", "State", "TimeMix"]

LayerState = tuple[Tensor, Tensor, Tensor]  # (att shift (B, C), wkv (B, H, N, N) fp32 [key, value], ffn shift (B, C))
State = list[LayerState]

# The decay is w = exp(-exp(-0.5) * sigmoid(z)) in (0.545, 1): the official "soft clamp"
# w = exp(-exp(-softplus(-z) - 0.5)), written without the log/exp round trip. (The rwkv package's
# CPU path rounds exp(-0.5) to 0.606531, 3.4e-7 relative: far below the parity tolerance.)
_DECAY_SCALE = math.exp(-0.5)

# Spike-encoding sites, relative to a block: the modules whose *input* a converter encodes.
# ``time_mix``: what the time mixing reads from the token-shifted stream (receptance, key, value
#   and the four low-rank projections, RWKV-7's counterpart of RWKV-6's r, k, v, gate + LoRAs).
# ``all``: also the inputs of the attention output and both FFN projections.
# Left dense in both, as for RWKV-6: the second low-rank matrices (w2, a2, v2, g2: their inputs
# are tanh / sigmoid / linear outputs inside the projection), and the LM head.
# ``att.v1_in`` exists in layers >= 1 only (see the value residual above).
SPIKE_SITES: dict[str, tuple[str, ...]] = {
    "time_mix": ("att.receptance", "att.key", "att.value", "att.w1_in", "att.a1_in", "att.v1_in", "att.g1_in"),
    "all": ("att.receptance", "att.key", "att.value", "att.w1_in", "att.a1_in", "att.v1_in", "att.g1_in",
            "att.output", "ffn.key", "ffn.value"),
}


def _token_shift(x: Tensor, last: Tensor) -> Tensor:
    """Previous token's vector for every position: (B, T, C) with ``last`` (B, C) in front."""
    if x.shape[1] == 1:  # decoding: the previous token is the state itself (no copy)
        return last.unsqueeze(1)
    return torch.cat((last.unsqueeze(1), x[:, :-1]), dim=1)


class TimeMix(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.n_head, self.head_size = H, N

        # static token-shift mixes, one per target
        self.x_r = nn.Parameter(torch.zeros(1, 1, C))
        self.x_w = nn.Parameter(torch.zeros(1, 1, C))
        self.x_k = nn.Parameter(torch.zeros(1, 1, C))
        self.x_v = nn.Parameter(torch.zeros(1, 1, C))
        self.x_a = nn.Parameter(torch.zeros(1, 1, C))
        self.x_g = nn.Parameter(torch.zeros(1, 1, C))
        # low-rank projections: decay (w), in-context learning rate (a), value residual (v), gate (g)
        self.w0 = nn.Parameter(torch.zeros(1, 1, C))
        self.w1 = nn.Parameter(torch.zeros(C, cfg.decay_lora_dim))
        self.w2 = nn.Parameter(torch.zeros(cfg.decay_lora_dim, C))
        self.a0 = nn.Parameter(torch.zeros(1, 1, C))
        self.a1 = nn.Parameter(torch.zeros(C, cfg.a_lora_dim))
        self.a2 = nn.Parameter(torch.zeros(cfg.a_lora_dim, C))
        if layer_id > 0:
            self.v0 = nn.Parameter(torch.zeros(1, 1, C))
            self.v1 = nn.Parameter(torch.zeros(C, cfg.v_lora_dim))
            self.v2 = nn.Parameter(torch.zeros(cfg.v_lora_dim, C))
        self.g1 = nn.Parameter(torch.zeros(C, cfg.gate_lora_dim))
        self.g2 = nn.Parameter(torch.zeros(cfg.gate_lora_dim, C))
        self.k_k = nn.Parameter(torch.zeros(1, 1, C))  # scales k before normalising it into kk
        self.k_a = nn.Parameter(torch.zeros(1, 1, C))  # how much of a is folded into k
        self.r_k = nn.Parameter(torch.zeros(H, N))  # the per-head r·k bonus of the current token

        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        # eps = 64e-5, not GroupNorm's default 1e-5 (official: 1e-5 * head_size_divisor**2, divisor 8)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)

        # encoding hook points of the low-rank inputs (parameter-free: the state dict is unchanged)
        self.w1_in = nn.Identity()
        self.a1_in = nn.Identity()
        if layer_id > 0:
            self.v1_in = nn.Identity()
        self.g1_in = nn.Identity()

    # The bare low-rank matrices, which spikelm.models.quantized.quantize_weights may store quantised
    # (used as x @ W; the forward reads them through ``dense``).
    WEIGHT_MATRICES = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")

    # Forward order of the energy rows of this block and its children (the report lists them so).
    ENERGY_ORDER = (
        "mix", "receptance.encode", "receptance", "key.encode", "key", "value.encode", "value", "w1_in.encode", "w1",
        "w2", "decay", "a1_in.encode", "a1", "a2", "a", "g1_in.encode", "g1", "gate", "g2", "kk", "k_a",
        "v1_in.encode", "v1", "v2", "v_mix", "wkv", "ln_x", "bonus", "output_gate", "output.encode", "output",
    )

    def energy_ops(self) -> dict[str, OpRow]:
        """Per token, beyond the Linear and GroupNorm children (C = n_embd = H heads of N).

        ``mix``: shift difference C add, six mixes ``x + xx * x_*`` 6C mul + 6C add. The low-rank
        matmuls w1/w2, a1/a2, v1/v2 (layers >= 1), g1/g2 are rows of their own (the ``*1`` ones
        spike-driven once their ``*_in`` point encodes). ``decay``: tanh Dw special, ``w0 +`` C add,
        sigmoid C special, ``* -e^-0.5`` C mul. ``a``: ``a0 +`` C add, sigmoid C special. ``gate``:
        sigmoid Dg special. ``kk``: ``k * k_k`` C mul; the per-head L2 norm: squares summed C MAC,
        one reciprocal square root per head H special, the clamp at eps H add, the scaling C mul.
        ``k_a``: ``k * (1 + (a - 1) * k_a)`` 2C add + 2C mul. ``v_mix`` (layers >= 1):
        ``v + (v_first - v) * sigmoid(v0 + ...)`` 3C add, C mul, C special. ``wkv``, the recurrent
        form per head: ``w = exp(logw)`` N special; ``a^T S`` N^2 MAC; ``diag(w) S`` N^2 mul;
        ``b (a^T S)`` and ``k^T v`` N^2 mul + N^2 add each; ``y = r S`` N^2 MAC; plus ``b = kk * a``
        C mul (``-kk`` is a sign: free). ``bonus``: ``r * k * r_k`` 2C mul, the per-head sum
        C - H add, ``* v`` C mul, ``y +`` C add. ``output_gate``: ``y * g`` C mul.
        """
        C = self.receptance.in_features
        H, N = self.n_head, self.head_size
        Dw, Da, Dg = self.w1.shape[1], self.a1.shape[1], self.g1.shape[1]
        rows = {
            "mix": OpRow("elementwise", {"add": 7 * C, "mul": 6 * C}),
            "w1": matmul_row(C, Dw, encoder="w1_in"),
            "w2": matmul_row(Dw, C),
            "decay": OpRow("elementwise", {"add": C, "mul": C, "special": Dw + C}),
            "a1": matmul_row(C, Da, encoder="a1_in"),
            "a2": matmul_row(Da, C),
            "a": OpRow("elementwise", {"add": C, "special": C}),
            "g1": matmul_row(C, Dg, encoder="g1_in"),
            "gate": OpRow("elementwise", {"special": Dg}),
            "g2": matmul_row(Dg, C),
            "kk": OpRow("elementwise", {"mul": 2 * C, "mac": C, "add": H, "special": H}),
            "k_a": OpRow("elementwise", {"add": 2 * C, "mul": 2 * C}),
        }
        if self.layer_id > 0:
            Dv = self.v1.shape[1]
            rows["v1"] = matmul_row(C, Dv, encoder="v1_in")
            rows["v2"] = matmul_row(Dv, C)
            rows["v_mix"] = OpRow("elementwise", {"add": 3 * C, "mul": C, "special": C})
        rows["wkv"] = OpRow("wkv", {"mac": 2 * H * N * N, "mul": 3 * H * N * N + C, "add": 2 * H * N * N,
                                    "special": H * N})
        rows["bonus"] = OpRow("elementwise", {"mul": 3 * C, "add": 2 * C - H})
        rows["output_gate"] = OpRow("elementwise", {"mul": C})
        return rows

    def forward(
        self, x: Tensor, shift: Tensor, wkv_state: Tensor, v_first: Tensor | None, wkv_impl: str = "auto"
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, T, C = x.shape
        H, N = self.n_head, self.head_size

        xx = _token_shift(x, shift) - x  # (B, T, C)
        xr, xw, xk, xv, xa, xg = (x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))

        r = self.receptance(xr)  # (B, T, C)
        k = self.key(xk)
        v = self.value(xv)
        mat = lambda name: dense(getattr(self, name), x.dtype)  # noqa: E731 (a quantised matrix, dequantised)
        z = self.w0 + torch.tanh(self.w1_in(xw) @ mat("w1")) @ mat("w2")  # decay pre-activation
        a = torch.sigmoid(self.a0 + (self.a1_in(xa) @ mat("a1")) @ mat("a2"))  # in-context learning rate, (0, 1)
        g = torch.sigmoid(self.g1_in(xg) @ mat("g1")) @ mat("g2")  # output gate (no final sigmoid in x070)

        # kk: the per-head unit-norm "removal key" of the delta rule. F.normalize's eps (1e-12) is
        # the official one; a head whose k * k_k is exactly 0 gets kk = 0, not NaN.
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v  # (B, T, C), read by every later layer for the same tokens
        else:
            assert v_first is not None, "layers >= 1 need layer 0's values"
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (self.v1_in(xv) @ mat("v1")) @ mat("v2"))

        # fp32 from here: the log-decay is <= 0 by construction and enters a long product
        logw = -_DECAY_SCALE * torch.sigmoid(z.float())  # (B, T, C), in [-0.607, 0]
        heads = lambda t: t.float().view(B, T, H, N)
        # S' = diag(w) S + (kk a) ((-kk)^T S) + k^T v, per head: the state forgets along kk at rate a
        y, wkv_state = wkv7(heads(r), heads(k), heads(v), heads(logw), heads(-kk), heads(kk * a), wkv_state, impl=wkv_impl)

        y = self.ln_x(y.reshape(B * T, C).to(self.ln_x.weight.dtype)).view(B, T, C)  # GroupNorm per head
        bonus = (r * k * self.r_k.view(1, 1, C)).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N)
        y = y.to(x.dtype) + bonus.view(B, T, C)
        return self.output(y * g), x[:, -1], wkv_state, v_first


class ChannelMix(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer_id: int):
        super().__init__()
        C, Fh = cfg.n_embd, cfg.dim_ffn
        self.x_k = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, Fh, bias=False)
        self.value = nn.Linear(Fh, C, bias=False)

    ENERGY_ORDER = ("mix", "key.encode", "key", "act", "value.encode", "value")

    def energy_ops(self) -> dict[str, OpRow]:
        """Per token: shift difference and mix 2C add + C mul; relu F add, square F mul."""
        Fh, C = self.key.out_features, self.key.in_features
        return {"mix": OpRow("elementwise", {"add": 2 * C, "mul": C}),
                "act": OpRow("elementwise", {"add": Fh, "mul": Fh})}

    def forward(self, x: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        xx = _token_shift(x, shift) - x
        k = torch.relu(self.key(x + xx * self.x_k)) ** 2  # (B, T, F)
        return self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)  # normalises the embedding, layer 0 only
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg, layer_id)

    ENERGY_ORDER = ("residual",)
    ENERGY_WHEN = "post"

    def energy_ops(self) -> dict[str, OpRow]:
        """Per token: the two residual adds, 2C add."""
        return {"residual": OpRow("residual", {"add": 2 * self.ln1.normalized_shape[0]})}

    def forward(
        self, x: Tensor, state: LayerState, v_first: Tensor | None, wkv_impl: str = "auto"
    ) -> tuple[Tensor, LayerState, Tensor]:
        att_shift, wkv_state, ffn_shift = state
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        # Token shift works on the LayerNorm output: the state keeps the last ln1/ln2 outputs.
        dx, att_shift, wkv_state, v_first = self.att(self.ln1(x), att_shift, wkv_state, v_first, wkv_impl)
        x = x + dx
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        x = x + dx
        return x, (att_shift, wkv_state, ffn_shift), v_first


class RWKV7(nn.Module):
    """RWKV-7 language model: ``forward(idx, state=None, last_only=False) -> (logits, state)``."""

    def __init__(self, cfg: RWKV7Config):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wkv_impl = "auto"  # "naive" | "chunked" | "auto" (single step for T == 1)

    @property
    def tokenizer_name(self) -> str:
        return self.cfg.tokenizer

    def spike_sites(self, sites: str) -> list[str]:
        """Qualified names of the modules whose input a converter spike-encodes (see SPIKE_SITES)."""
        if sites not in SPIKE_SITES:
            raise ValueError(f"unknown site set {sites!r}; choose one of {', '.join(SPIKE_SITES)}")
        names = []
        for i, blk in enumerate(self.blocks):
            for rel in SPIKE_SITES[sites]:
                part, leaf = rel.split(".")
                if leaf in getattr(blk, part)._modules:  # v1_in: layers >= 1 only
                    names.append(f"blocks.{i}.{rel}")
        return names

    def initial_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        device = device or self.emb.weight.device
        dtype = dtype or self.emb.weight.dtype
        C, H, N = self.cfg.n_embd, self.cfg.n_head, self.cfg.head_size
        return [
            (
                torch.zeros(batch_size, C, device=device, dtype=dtype),
                torch.zeros(batch_size, H, N, N, device=device, dtype=torch.float32),
                torch.zeros(batch_size, C, device=device, dtype=dtype),
            )
            for _ in self.blocks
        ]

    def forward(self, idx: Tensor, state: State | None = None, last_only: bool = False) -> tuple[Tensor, State]:
        """idx (B, T) int64 -> logits (B, T, V) (or (B, 1, V) with ``last_only``), new state."""
        B = idx.shape[0]
        if state is None:
            state = self.initial_state(B, idx.device)
        x = self.emb(idx)  # (B, T, C)
        v_first: Tensor | None = None
        new_state: State = []
        for blk, s in zip(self.blocks, state):
            x, s, v_first = blk(x, s, v_first, self.wkv_impl)
            new_state.append(s)
        if last_only:
            x = x[:, -1:]  # generation needs only the last position: skip the head elsewhere
        logits = self.head(self.ln_out(x))
        return logits, new_state

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> RWKV7:
        """Initialise for training from scratch, following the shape of RWKV-LM v7's scheme.

        Token-shift mixes fade with depth; decays spread from fast to slow per channel with a
        zigzag within each head; the low-rank second matrices start small and the first ones at
        zero; attention and FFN output projections start at zero, so each block starts as the
        identity. (RWKV-LM draws w2, a2, v2, g2 orthogonal; a scaled normal of the same variance
        is used here, as in RWKV6.init_weights.)
        """
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        cfg = self.cfg
        L, C, N = cfg.n_layer, cfg.n_embd, cfg.head_size

        def uniform(t: Tensor, a: float) -> None:
            t.copy_(torch.rand(t.shape, generator=g) * 2 * a - a)

        def ortho_like(w: Tensor, scale: float) -> None:
            # RWKV-LM: orthogonal_(w, gain=tall_gain(w) * scale), drawn as a normal of that variance.
            orthogonal_like(w, tall_gain(w) * scale, g)

        uniform(self.emb.weight, 1e-4)
        orthogonal_like(self.head.weight, head_gain(cfg.vocab_size, C), g)
        ddd = torch.arange(C, dtype=torch.float32).view(1, 1, C) / C
        n = torch.arange(C, dtype=torch.float32)
        linear = n / max(1, C - 1) - 0.5
        zigzag = ((n % N) - (N - 1) / 2) / max(1.0, (N - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        for i, blk in enumerate(self.blocks):
            r01 = i / max(1, L - 1)
            r10 = 1.0 - i / L
            att, ffn = blk.att, blk.ffn
            for name, p in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
                getattr(att, name).copy_(1.0 - ddd ** (p * r10))
            www = -6 + 6 * (n / max(1, C - 1)) ** (1 + r01**0.3)
            att.w0.copy_((www + 0.5 + zigzag * 2.5).view(1, 1, C))  # + 0.5: undone by the soft clamp
            att.a0.copy_((-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C))
            att.k_k.copy_((0.71 - linear * 0.1).view(1, 1, C))
            att.k_a.fill_(1.02)
            att.r_k.fill_(-0.04)
            lora = [(att.w1, att.w2), (att.a1, att.a2), (att.g1, att.g2)]
            if i > 0:
                att.v0.copy_((0.73 - linear * 0.4).view(1, 1, C))
                lora.append((att.v1, att.v2))
            for first, second in lora:
                first.zero_()
                ortho_like(second, 0.1)
            uniform(att.receptance.weight, 0.5 / math.sqrt(C))
            uniform(att.key.weight, 0.05 / math.sqrt(C))
            uniform(att.value.weight, 0.5 / math.sqrt(C))
            att.output.weight.zero_()
            att.ln_x.weight.fill_(1.0)
            att.ln_x.bias.zero_()
            ffn.x_k.copy_(1.0 - ddd ** (r10**4))
            uniform(ffn.key.weight, 0.5 / math.sqrt(C))
            ffn.value.weight.zero_()
        return self
