"""RWKV-6 ("Finch", x060), one module for parallel and recurrent use.

Read top to bottom: TimeMix (data-dependent token shift "ddlerp", data-dependent decay, WKV6
recurrence, GroupNorm, gate), ChannelMix (squared-ReLU FFN with a receptance gate), Block, RWKV6.

Parameter names and shapes are the official ones (RWKV-LM ``v6/src/model.py``, the ``.pth``
files released as ``RWKV-x060-*``), so a released checkpoint loads with ``strict=True``:

    emb.weight [V, C]                      blocks.0.ln0.{weight,bias} [C] (layer 0 only)
    blocks.i.ln1 / ln2 [C]                 blocks.i.att.time_maa_{x,w,k,v,r,g} [1, 1, C]
    blocks.i.att.time_maa_w1 [C, 5*Dm]     blocks.i.att.time_maa_w2 [5, Dm, C]
    blocks.i.att.time_decay [1, 1, A]      blocks.i.att.time_decay_w1 [C, Dd]  ..._w2 [Dd, A]
    blocks.i.att.time_faaaa [H, N]         blocks.i.att.{receptance,key,value,gate}.weight [A, C]
    blocks.i.att.output.weight [C, A]      blocks.i.att.ln_x.{weight,bias} [A]
    blocks.i.ffn.time_maa_{k,r} [1, 1, C]  blocks.i.ffn.key.weight [F, C], value [C, F], receptance [C, C]
    ln_out.{weight,bias} [C]               head.weight [V, C]

Recurrent state (one entry per layer, batch first): the last ``ln1`` output (B, C), the WKV
state (B, H, N, N) in fp32 indexed [key, value], and the last ``ln2`` output (B, C). Feeding a
sequence in one call or token by token with the state carried gives the same logits.
``forward(..., last_only=True)`` (a prompt before generation) computes the head on the last
position, and the last block's gate, output projection and channel mix only on the positions
the last logits depend on; the state is the same.

Low precision: a model cast to bf16/fp16 (``.to``, loading with ``dtype``) keeps
``TimeMix.FLOAT32_PARAMS`` (the decay base, the bonus, the trained state, ``ln_x``) in float32;
the WKV recurrence, its state and the GroupNorm after it run in float32.

Spike-encoding sites: each linear layer is an ``nn.Linear`` (so a converter can swap it for a
spiking linear of the same parameter names), and the two LoRA projections read their input
through ``maa_in`` / ``decay_in`` identity modules (no parameters, so the state dict is
unchanged) that a converter may replace by an encoder. The model itself knows nothing of spikes.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RWKV6Config
from ..ops import rwkv6 as ops6
from ..ops.backend import Backend, compiled, resolve
from ..ops.linear import Linear, baddbmm, matmul
from ..ops.wkv6 import LOG_DECAY_FLOOR, wkv6
from .init import head_gain, orthogonal_like, tall_gain
from .optable import OpRow, matmul_row
from .quantized import dense

LayerState = tuple[Tensor, Tensor, Tensor]  # (att shift (B, C), wkv (B, H, N, N) fp32, ffn shift (B, C))
State = list[LayerState]

def _token_shift(x: Tensor, last: Tensor) -> Tensor:
    """Previous token's vector for every position: (B, T, C) with ``last`` (B, C) in front."""
    if x.shape[1] == 1:  # decoding: the previous token is the state itself (no copy)
        return last.unsqueeze(1)
    return torch.cat((last.unsqueeze(1), x[:, :-1]), dim=1)


def _last_token(x: Tensor) -> Tensor:
    """The token-shift state: x[:, -1] (B, C) as its own B*C buffer. A view would keep the whole
    (B, T, C) LayerNorm output alive for as long as the state lives (a prefill's worth of memory
    held by every carried state). With T = 1 the view's storage is already just B*C (a contiguous
    view is kept; a strided one, the last row of a trimmed last block, is copied)."""
    last = x[:, -1]
    return last if x.shape[1] == 1 and last.is_contiguous() else last.clone(memory_format=torch.contiguous_format)


class TimeMix(nn.Module):
    backend: Backend = None  # the implementation of each op (spikelm.ops.set_backend)

    def __init__(self, cfg: RWKV6Config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        C, A, H, N = cfg.n_embd, cfg.dim_att, cfg.n_head, cfg.head_size
        Dm, Dd = cfg.time_mix_extra_dim, cfg.time_decay_extra_dim
        self.n_head, self.head_size = H, N

        self.time_maa_x = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_w = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_v = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_g = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * Dm))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, Dm, C))
        self.time_decay = nn.Parameter(torch.zeros(1, 1, A))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, Dd))
        self.time_decay_w2 = nn.Parameter(torch.zeros(Dd, A))
        self.time_faaaa = nn.Parameter(torch.zeros(H, N))
        if cfg.has_time_state:
            # A trained initial WKV state (state tuning); stored [H, N_v, N_k] in official files.
            self.time_state = nn.Parameter(torch.zeros(H, N, N))

        self.receptance = Linear(C, A, bias=False)
        self.key = Linear(C, A, bias=False)
        self.value = Linear(C, A, bias=False)
        self.gate = Linear(C, A, bias=False)
        self.output = Linear(A, C, bias=False)
        # eps = 1e-5 * head_size_divisor**2 with the official divisor 8: 64e-5.
        self.ln_x = nn.GroupNorm(H, A, eps=64e-5)

        self.maa_in = nn.Identity()  # input of the ddlerp LoRA (time_maa_w1)
        self.decay_in = nn.Identity()  # input of the decay LoRA (time_decay_w1)

    # Forward order of the energy rows of this block and its children (the report lists them so).
    ENERGY_ORDER = (
        "ddlerp", "maa_in.encode", "time_maa_w1", "time_maa_w2", "receptance.encode", "receptance", "key.encode",
        "key", "value.encode", "value", "gate.encode", "gate", "decay_in.encode", "time_decay_w1", "time_decay_w2",
        "decay", "wkv", "ln_x", "gate_act", "output.encode", "output",
    )

    def energy_ops(self) -> dict[str, OpRow]:
        """Per token, beyond the Linear and GroupNorm children (C = n_embd, A = dim_att, H heads of N).

        ``ddlerp``: shift difference C add; ``x + xx * maa_x`` C mul + C add; five mixes
        ``x + xx * (maa_* + m_*)`` 5 x (C mul + 2C add); tanh of the LoRA 5Dm special. The LoRA
        matmuls are rows of their own (``time_maa_w1`` is spike-driven once ``maa_in`` encodes).
        ``decay``: tanh Dd + exp A special, ``+ time_decay`` and the clamp 2A add. ``wkv``, the
        recurrent form per head (what a token-by-token device computes, whatever kernel runs here):
        ``y = r S + (sum_i r_i u_i k_i) v`` N^2 + N MAC, 2N mul, N add; ``S = diag(w) S + k v^T``
        2N^2 mul, N^2 add; ``w = exp(logw)`` N special. ``gate_act``: silu A special + A mul, and
        ``y * g`` A mul.
        """
        C, five_dm = self.time_maa_w1.shape
        Dm = five_dm // 5
        Dd, A = self.time_decay_w2.shape
        H, N = self.n_head, self.head_size
        return {
            "ddlerp": OpRow("elementwise", {"add": 12 * C, "mul": 6 * C, "special": 5 * Dm}),
            "time_maa_w1": matmul_row(C, 5 * Dm, encoder="maa_in"),
            "time_maa_w2": OpRow("linear", {"mac": 5 * Dm * C}, Dm, C),
            "time_decay_w1": matmul_row(C, Dd, encoder="decay_in"),
            "time_decay_w2": matmul_row(Dd, A),
            "decay": OpRow("elementwise", {"add": 2 * A, "special": Dd + A}),
            "wkv": OpRow("wkv", {"mac": H * (N * N + N), "mul": H * (2 * N * N + 2 * N), "add": H * (N * N + N),
                                 "special": H * N}),
            "gate_act": OpRow("elementwise", {"special": A, "mul": 2 * A}),
        }

    # The bare matrices of the two LoRAs, which spikelm.models.quantized.quantize_weights may store
    # quantised (used as x @ W; the forward reads them through ``dense``).
    WEIGHT_MATRICES = ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2")

    # Kept in float32 whatever the model's dtype, as RWKV-LM's inference code and the rwkv package
    # keep them: the decay base enters exp(-exp(.)), where a bf16 rounding (2^-9 relative) moves
    # every decay of a long memory; the bonus and the trained state feed the float32 WKV state;
    # ln_x normalises the float32 WKV output. A few C values per layer.
    FLOAT32_PARAMS = ("time_decay", "time_faaaa", "time_state", "ln_x.weight", "ln_x.bias")

    def _apply(self, fn, recurse=True):  # noqa: ANN001 (nn.Module's signature): casts and moves
        kept = {n: p.data for n, p in self.named_parameters() if n in self.FLOAT32_PARAMS and p.dtype == torch.float32}
        super()._apply(fn, recurse)
        for n, old in kept.items():
            p = self.get_parameter(n)
            if p.dtype != torch.float32:  # a cast: keep the float32 value, take only the new device
                p.data = old.to(p.device)
        return self

    def initial_wkv(self, B: int, device: torch.device) -> Tensor:
        H, N = self.n_head, self.head_size
        if hasattr(self, "time_state"):
            # No detach: the state is a trained parameter (state tuning) and must receive a gradient
            # (a detached copy left it untrained, and DDP failed on the unused parameter).
            return self.time_state.float().transpose(1, 2).unsqueeze(0).expand(B, H, N, N).contiguous()
        return torch.zeros(B, H, N, N, device=device, dtype=torch.float32)

    def forward(self, x: Tensor, shift: Tensor, wkv_state: Tensor, wkv_impl: str = "auto",
                rows: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C) -> (output (B, T, C), token-shift state, WKV state). With ``rows``, the output of
        the last ``rows`` positions only: the states still take in every position, the gate and
        the output projection skip the others."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        be = self.backend  # the products' and WKV's implementations (spikelm.ops.backend)

        # Data-dependent linear interpolation between x_t and x_{t-1} (ddlerp), xx = x_{t-1} - x_t.
        xx = _token_shift(x, shift) - x  # (B, T, C)
        xxx = torch.addcmul(x, xx, self.time_maa_x)  # x + xx * maa_x
        xxx = torch.tanh(matmul(self.maa_in(xxx), dense(self.time_maa_w1, x.dtype), be))  # (B, T, 5*Dm)
        xxx = xxx.view(B * T, 5, -1).transpose(0, 1)  # (5, B*T, Dm)
        # x_* = x + xx * (time_maa_* + m_*) for the five targets at once; the product adds time_maa_*
        maa = torch.stack((self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g))
        mix = baddbmm(maa.view(5, 1, C), xxx, dense(self.time_maa_w2, x.dtype), be).view(5, B, T, C)
        xw, xk, xv, xr, xg = torch.addcmul(x, xx, mix).unbind(0)

        r = self.receptance(xr)  # (B, T, A)
        k = self.key(xk)
        v = self.value(xv)

        # Data-dependent decay, in fp32: w = exp(-exp(d)), passed to WKV as its log, -exp(d), floored.
        # The chain is float32 whatever the model's dtype (time_decay stays float32 in a bf16 or fp16
        # model spikelm.load builds).
        d = matmul(torch.tanh(matmul(self.decay_in(xw), dense(self.time_decay_w1, x.dtype), be)),
                   dense(self.time_decay_w2, x.dtype), be).float()
        logw = (-torch.exp(d + self.time_decay.float())).clamp(min=LOG_DECAY_FLOOR)  # (B, T, A)

        heads = lambda t: t.float().view(B, T, H, N)  # noqa: E731
        y, wkv_state = wkv6(heads(r), heads(k), heads(v), heads(logw), self.time_faaaa.float(), wkv_state, impl=wkv_impl,
                            backend=be)
        if rows is not None and rows < T:
            y, xg, T = y[:, -rows:], xg[:, -rows:], rows
        g = self.gate(xg)
        y = y.reshape(B * T, H * N)
        y = self.ln_x(y).view(B, T, H * N)  # GroupNorm per head, float32 (its parameters stay float32)
        out = self.output(y.to(x.dtype) * F.silu(g))
        return out, _last_token(x), wkv_state


class ChannelMix(nn.Module):
    def __init__(self, cfg: RWKV6Config, layer_id: int):
        super().__init__()
        C, Fh = cfg.n_embd, cfg.dim_ffn
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = Linear(C, Fh, bias=False)
        self.receptance = Linear(C, C, bias=False)
        self.value = Linear(Fh, C, bias=False)

    ENERGY_ORDER = ("mix", "key.encode", "key", "act", "receptance.encode", "receptance", "value.encode", "value")

    def energy_ops(self) -> dict[str, OpRow]:
        """Per token: shift difference C add and two mixes 2 x (C mul + C add); ``relu`` F add,
        square F mul, sigmoid C special, the product C mul."""
        Fh, C = self.key.out_features, self.key.in_features
        return {"mix": OpRow("elementwise", {"add": 3 * C, "mul": 2 * C}),
                "act": OpRow("elementwise", {"add": Fh, "mul": Fh + C, "special": C})}

    def forward(self, x: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        xx = _token_shift(x, shift) - x
        xk = torch.addcmul(x, xx, self.time_maa_k)  # x + xx * maa_k
        xr = torch.addcmul(x, xx, self.time_maa_r)
        k = torch.relu(self.key(xk)).square()  # (B, T, F)
        return torch.sigmoid(self.receptance(xr)) * self.value(k), _last_token(x)


def _GLOBAL_HOOKS() -> bool:  # noqa: N802
    """Whether hooks are registered for every module (torch's global module hooks)."""
    from torch.nn.modules import module as m

    return bool(getattr(m, "_global_forward_hooks", None) or getattr(m, "_global_forward_pre_hooks", None))


class Block(nn.Module):
    backend: Backend = None  # the decoding step's implementation and the block's (spikelm.ops.set_backend)

    def __init__(self, cfg: RWKV6Config, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)  # normalises the embedding, layer 0 only
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg, layer_id)

    ENERGY_ORDER = ("residual",)
    ENERGY_WHEN = "post"  # the residual row follows the block's children in the report

    def energy_ops(self) -> dict[str, OpRow]:
        """Per token: the two residual adds, 2C add."""
        return {"residual": OpRow("residual", {"add": 2 * self.ln1.normalized_shape[0]})}

    def _step(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState] | None:
        """This block on one token as one C++ call (op ``rwkv6_block`` of ``spikelm.ops.backend``:
        the same operations in float32, without a hundred tensor operations' dispatch), or None
        where it does not apply (the backend, the dtypes, a gradient), or where the modules must
        run: a converted block (spike encoders or other modules in its sites) or any hook on its
        modules (an energy counter's, say), which the C++ step would not call."""
        if not ops6.takes_block_step(x, self.backend) or _GLOBAL_HOOKS():
            return None
        p = self._step_params(ops6.block_step_params())
        if p is None:
            return None
        return ops6.block_step(x, state, p, self.ln1.eps, self.att.ln_x.eps)

    def _step_params(self, names: tuple[str, ...]) -> list[Tensor] | None:
        """The parameters named ``names`` (the C++ step's table; an empty tensor for a missing
        ``ln0``), or None where a module of the block has a hook or is not of a plain block's
        types. Called before every decoding step: the walk over the block's modules and parameters
        runs each time (hooks come and go, a conversion swaps modules,
        ``load_state_dict(assign=True)`` swaps parameters), but the named list is rebuilt only
        when one of them is not the same object as at the last call (``named_parameters`` costs
        more than the step's own arithmetic in a small model)."""
        seen: list = []
        stack: list[nn.Module] = [self]
        while stack:
            mod = stack.pop()
            if mod._forward_hooks or mod._forward_pre_hooks or type(mod) not in _STEP_MODULES:
                return None
            seen.append(mod)
            seen.extend(mod._parameters.values())
            stack.extend(m for m in mod._modules.values() if m is not None)
        cached = self.__dict__.get("_step_cache")
        if cached is None or len(cached[0]) != len(seen) or not all(map(operator.is_, cached[0], seen)):
            params = dict(self.named_parameters())
            empty = torch.empty(0)
            cached = (seen, [params.get(n, empty) for n in names])
            self.__dict__["_step_cache"] = cached  # a plain attribute, outside the module's registries
        return cached[1]

    def forward(self, x: Tensor, state: LayerState, wkv_impl: str = "auto",
                last_only: bool = False) -> tuple[Tensor, LayerState]:
        """x (B, T, C) -> (B, T, C) and the new state; with ``last_only``, (B, 1, C): the last position
        only (the same values), for a last block whose other positions nobody reads. The state
        is the same either way. One token runs as one C++ call where it can (:meth:`_step`); with
        the ``compile`` backend the block's modules run under ``torch.compile``."""
        if x.shape[1] == 1 and wkv_impl == "auto":
            done = self._step(x, state)
            if done is not None:
                return done
        if resolve("rwkv6_block", self.backend, x, cpp_ok=False) == "compile":
            return compiled(Block._forward_modules)(self, x, state, wkv_impl, last_only)
        return self._forward_modules(x, state, wkv_impl, last_only)

    def _forward_modules(self, x: Tensor, state: LayerState, wkv_impl: str, last_only: bool) -> tuple[Tensor, LayerState]:
        """The block through its modules (the C++ step's twin)."""
        att_shift, wkv_state, ffn_shift = state
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        # Token shift works on the LayerNorm output: the state keeps the last ln1/ln2 outputs.
        h = self.ln1(x)
        # The last position's output needs the time mix at the last two positions (the channel mix
        # shifts in the one before) and the channel mix at the last one; the WKV state needs all.
        keep = 2 if last_only and x.shape[1] > 2 else None
        dx, att_shift, wkv_state = self.att(h, att_shift, wkv_state, wkv_impl, rows=keep)
        x = (x if keep is None else x[:, -keep:]) + dx
        h = self.ln2(x)
        if last_only and h.shape[1] > 1:
            h, ffn_shift = h[:, -1:], h[:, -2]
            x = x[:, -1:]
        dx, ffn_shift = self.ffn(h, ffn_shift)
        x = x + dx
        return x, (att_shift, wkv_state, ffn_shift)


# The module types of a plain (not converted) block: the C++ decoding step computes exactly these.
_STEP_MODULES = (Block, TimeMix, ChannelMix, Linear, nn.LayerNorm, nn.GroupNorm, nn.Identity)


class RWKV6(nn.Module):
    """RWKV-6 language model: ``forward(idx, state=None) -> (logits, state)``."""

    backend: Backend = None  # see spikelm.ops.set_backend (set on every module that runs an op)

    CPU_FP32_TRANSPOSED = ("head.weight",)  # see lay_out_head

    def __init__(self, cfg: RWKV6Config):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wkv_impl = "auto"  # "naive" | "chunked" | "auto" (naive for T == 1)
        self.lay_out_head()

    def lay_out_head(self) -> None:
        """Store a float32 CPU ``head.weight`` (V, C) as the transpose of a contiguous (C, V) matrix.

        Same parameter, shape and values; only the memory order changes. Decoding's largest product
        is the head's matrix-vector product (V x C: 128 MB at V = 65536, C = 512), and MKL's fp32
        kernel streams the (C, V) order faster than the (V, C) one (on an AVX2 CPU, about twice). bf16/fp16 (oneDNN is the other way round) and CUDA keep (V, C). Called
        when the model is built and after every ``.to()`` / ``.float()`` / ``.bfloat16()`` (through
        ``_apply``); the checkpoint loader reads ``CPU_FP32_TRANSPOSED`` and casts a file's head
        straight into this order (one copy, as any cast). Saving writes the usual contiguous (V, C)
        tensor.
        """
        w = self.head.weight
        if not isinstance(w, Tensor) or w.is_meta or w.dim() != 2:  # a quantised head keeps its layout
            return
        want_t = w.device.type == "cpu" and w.dtype == torch.float32
        if want_t and not w.t().is_contiguous():
            with torch.no_grad():
                w.data = w.t().contiguous().t()
        elif not want_t and not w.is_contiguous():
            with torch.no_grad():
                w.data = w.contiguous()

    def _apply(self, fn, recurse=True):  # noqa: ANN001 (nn.Module's signature): casts and moves
        super()._apply(fn, recurse)
        self.lay_out_head()
        return self

    @property
    def tokenizer_name(self) -> str:
        return self.cfg.tokenizer

    def initial_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        device = device or self.emb.weight.device
        dtype = dtype or self.emb.weight.dtype
        C = self.cfg.n_embd
        return [
            (
                torch.zeros(batch_size, C, device=device, dtype=dtype),
                blk.att.initial_wkv(batch_size, device),
                torch.zeros(batch_size, C, device=device, dtype=dtype),
            )
            for blk in self.blocks
        ]

    def forward(self, idx: Tensor, state: Optional[State] = None, last_only: bool = False) -> tuple[Tensor, State]:
        """idx (B, T) int64 -> logits (B, T, V) (or (B, 1, V) with ``last_only``), new state."""
        B, T = idx.shape
        if state is None:
            state = self.initial_state(B, idx.device)
        x = self.emb(idx)  # (B, T, C)
        new_state: State = []
        for i, (blk, s) in enumerate(zip(self.blocks, state)):
            # generation needs only the last position: the last block and the head skip the others
            x, s = blk(x, s, self.wkv_impl, last_only=last_only and i == len(self.blocks) - 1)
            new_state.append(s)
        logits = self.head(self.ln_out(x[:, -1:] if last_only else x))
        return logits, new_state

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> "RWKV6":
        """Initialise for training from scratch, following the shape of RWKV-LM v6's scheme.

        Token-shift mixes fade with depth, decays spread from fast (-6) to slow per channel and
        layer, and the output projections start at zero so each block starts as the identity.
        """
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        cfg = self.cfg
        L, C, A, N = cfg.n_layer, cfg.n_embd, cfg.dim_att, cfg.head_size

        def uniform(t: Tensor, a: float) -> None:
            t.copy_(torch.rand(t.shape, generator=g) * 2 * a - a)

        def ortho_like(w: Tensor, scale: float) -> None:
            # RWKV-LM: orthogonal_(w, gain=tall_gain(w) * scale), drawn as a normal of that variance.
            orthogonal_like(w, tall_gain(w) * scale, g)

        uniform(self.emb.weight, 1e-4)
        orthogonal_like(self.head.weight, head_gain(cfg.vocab_size, C), g)
        ddd = torch.arange(C, dtype=torch.float32).view(1, 1, C) / C
        n = torch.arange(A, dtype=torch.float32)
        for i, blk in enumerate(self.blocks):
            r01 = i / max(1, L - 1)
            r10 = 1.0 - i / L
            att, ffn = blk.att, blk.ffn
            att.time_maa_x.copy_(1.0 - ddd**r10)
            att.time_maa_w.copy_(1.0 - ddd**r10)
            att.time_maa_k.copy_(1.0 - ddd**r10)
            att.time_maa_v.copy_(1.0 - (ddd**r10 + 0.3 * r01))
            att.time_maa_r.copy_(1.0 - ddd ** (0.5 * r10))
            att.time_maa_g.copy_(1.0 - ddd ** (0.5 * r10))
            uniform(att.time_maa_w1, 1e-4)
            uniform(att.time_maa_w2, 1e-2)
            att.time_decay.copy_((-6 + 5 * (n / max(1, A - 1)) ** (0.7 + 1.3 * r01)).view(1, 1, A))
            uniform(att.time_decay_w1, 1e-4)
            uniform(att.time_decay_w2, 1e-2)
            tmp = r01 * (1 - n / max(1, A - 1)) + ((n + 1) % 3 - 1) * 0.1
            att.time_faaaa.copy_(tmp.view(-1, N))
            for lin in (att.receptance, att.key, att.value, att.gate):
                ortho_like(lin.weight, 1.0)
            att.output.weight.zero_()
            att.ln_x.weight.fill_(((1 + i) / L) ** 0.7)
            att.ln_x.bias.zero_()
            ffn.time_maa_k.copy_(1.0 - ddd**r10)
            ffn.time_maa_r.copy_(1.0 - ddd**r10)
            ortho_like(ffn.key.weight, 1.0)
            ffn.receptance.weight.zero_()
            ffn.value.weight.zero_()
        return self
