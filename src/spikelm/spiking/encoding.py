"""Multi-head spike encoding (MHSE, SpikeRWKV section 3.4) and rate coding (the SNN-RWKV baseline).

Definition
----------
A real value ``x`` with a calibrated scale ``s > 0`` (one per tensor, or any shape that broadcasts
to ``x``, e.g. one per channel) becomes

* a spiking flag ``f = (x < 0)``: one spike marks a negative value (section 3.3), so all synaptic
  weights downstream act on magnitudes;
* a magnitude ``a = |x| / s``, clipped to ``[0, A_max]`` (saturation policy "clip"; the number of
  clipped values is reported);
* ``l`` spike layers with weights ``w_i = base ** (n_int - i)``, ``i = 1..l`` (default base 2 and
  ``n_int = 1``: 1, 1/2, 1/4, ...). ``A_max = sum_i w_i`` is the most one time step can emit.

Over ``T`` time steps a cascade of Integrate-and-Fire neurons with soft reset (eq. 1-2) runs on one
membrane ``v`` (``v = 0``, or ``w_l / 2`` with ``init_half``)::

    for j in 1..T:
        v += a                                  # charge: the same input every step
        for i in 1..l:                          # layers in order, largest weight first
            spike[j, i] = (v >= w_i)            # fire (threshold w_i; v == w_i fires)
            v -= w_i * spike[j, i]              # soft reset keeps the residual

and the value is read back as eq. (3)-(4) say::

    x_hat = (-1 if f else 1) * s * (1/T) * sum_j sum_i w_i * spike[j, i]

Rate coding (SNN-RWKV) is the special case ``l = 1``, ``w_1 = 1``: one IF neuron per value with
threshold ``s`` (since ``a = |x| / s`` meets threshold 1), ``a`` clipped to ``[0, 1]``, the same flag.

Closed form (base 2)
--------------------
Measure the membrane in units of the smallest weight: ``A = a / w_l`` and layer ``i`` weighs
``2 ** (l - i)`` units, so ``A_max = 2 ** l - 1`` units. Claim: if the residual entering step ``j``
is ``r in [0, 1)`` units, the step emits exactly ``floor(r + A)`` units, spelled in binary across
the layers, and leaves ``frac(r + A)``.

* Bound: ``r + A < 1 + (2 ** l - 1) = 2 ** l``.
* Induction over layers: before layer ``i`` the membrane is below ``2 ** (l - i + 1)``. If it is
  at least ``2 ** (l - i)`` the layer fires and subtracts it, otherwise not; either way it is now
  below ``2 ** (l - i)``. So layer ``i`` fires iff bit ``l - i`` of ``floor(r + A)`` is set (greedy
  binary digits), and the membrane never goes negative.
* After layer ``l`` the membrane lies in ``[0, 1)`` and the amount removed is an integer, hence
  ``floor(r + A)`` and the new residual ``frac(r + A)``.

Starting from ``r_0 = c`` (0, or 1/2 with ``init_half``), the emitted total after ``j`` steps is
``q_j = floor(c + j * A)`` and the emission of step ``j`` is ``d_j = q_j - q_{j-1} <= 2 ** l - 1``.
Its bits are the spikes of step ``j`` (layer 1 = most significant bit), and the decoded magnitude
is ``s * w_l * q_T / T``: truncation to the grid ``w_l / T`` (error in ``[0, w_l s / T)``), or
rounding with ``init_half`` (error at most ``w_l s / (2T)``), for values within range. Nothing needs
stepping through time; per-(step, layer) spike counts come from a histogram of each ``d_j`` (or
its bits) and the (T, l, ...) spike tensor is built only on request.

For any other base the argument breaks: with 0/1 spikes per layer and step, a base-``b > 2`` digit
greater than 1 cannot be emitted in one step and the cascade carries a residual of several units
(for base 10 the per-layer counts of ``0.234567`` are not its decimal digits). The closed form
therefore accepts base 2 only; the simulation runs any base.

Exactness
---------
Both implementations give bit-identical decoded values and spikes. ``a`` is computed once, in
float64, and rounded to float32, so ``A`` has a 24-bit significand (``A`` is ``a`` times an exact
power of two). Then, for ``T <= 2 ** 16`` and ``l <= 24``, every float64 operation either path
performs is exact: ``j * A`` (24 + 16 bits), ``c + j * A`` and the simulation's ``r + A`` (all
terms are multiples of ``ulp32(A)`` or of 1/2 and span fewer than 53 bits, once ``A >= 2 ** -29``;
a smaller ``A`` never fires within 2 ** 16 steps, whatever the rounding), and each cascade
subtraction ``v - w_i`` with ``w_i <= v < 2 w_i`` (Sterbenz). A float32 membrane would drift
(``v += a`` accumulated T times is not ``T * a``) and break ties such as ``a = k * w_l / T``.
Decoding divides the exact emitted total by ``T`` and multiplies by ``s`` in float64, in one
shared helper, then casts to the input dtype. The float32 rounding of ``a`` is far finer than the
encoding's grid ``w_l / T`` for any practical ``T * 2 ** l``.

Paper Fig. 3
------------
Fig. 3 encodes ``-0.234567...`` with ``l = 6`` and the text calls it "2 integer bits and 4
fractional bits": ``n_int = 2``, ``s = 1``, weights 2, 1, 1/2, 1/4, 1/8, 1/16. With ``T = 1`` the
flag fires and the layers spike ``0 0 0 0 1 1``: ``-0.1875 = -0.0011b``. The decimal digits
"0.23456" drawn in the figure cannot be binary spikes (see above); the closest binary reading of
"the first l digits of the value" is ``n_int = 0`` (weights 1/2 .. 1/64): spikes ``0 0 1 1 1 1``,
``x_hat = -0.234375 = -0.001111b``, the first six binary digits of 0.234567.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..ops.backend import Backend
from ..ops.spikes import decode_steps

__all__ = [
    "METHODS",
    "SpikeStats",
    "mhse_weights",
    "mhse_a_max",
    "calibrated_scale",
    "mhse_simulate",
    "mhse_closed_form",
    "mhse_decode",
    "floor_half_up_",
    "mhse_spike_counts",
    "rate_simulate",
    "rate_closed_form",
    "decode",
    "spike_encode",
]

METHODS = ("mhse", "rate")

# Limits under which the float64 arithmetic of both implementations is exact (module docstring).
MAX_T = 2**16
MAX_LAYERS = 24
# Above this many layers the per-step histogram (2**l bins) would be too large; count bit by bit.
_HISTOGRAM_MAX_LAYERS = 16


@dataclass
class SpikeStats:
    """Spike counts of one encoded tensor, totals over all its elements.

    ``spikes_per_layer_step[j, i]``: spikes of layer ``i + 1`` at step ``j + 1`` (flags excluded).
    ``flag_spikes``: number of negative values (one flag spike each). ``clipped``: values whose
    magnitude ``|x| / s`` exceeded ``A_max`` and was clipped. ``numel``: number of encoded values.
    Stats of several tensors add up with ``+``.
    """

    spikes_per_layer_step: Tensor  # (T, l) int64, on CPU
    flag_spikes: int
    clipped: int
    numel: int

    @property
    def T(self) -> int:
        return int(self.spikes_per_layer_step.shape[0])

    @property
    def layers(self) -> int:
        return int(self.spikes_per_layer_step.shape[1])

    @property
    def layer_spikes(self) -> int:
        """All layer spikes (flags excluded)."""
        return int(self.spikes_per_layer_step.sum())

    @property
    def firing_rate(self) -> float:
        """Layer spikes per neuron per time step: ``layer_spikes / (numel * T * l)``."""
        slots = self.numel * self.T * self.layers
        return self.layer_spikes / slots if slots else 0.0

    def __add__(self, other: SpikeStats) -> SpikeStats:
        if self.spikes_per_layer_step.shape != other.spikes_per_layer_step.shape:
            raise ValueError(
                f"cannot add stats of (T, l) = {tuple(self.spikes_per_layer_step.shape)} "
                f"and {tuple(other.spikes_per_layer_step.shape)}"
            )
        return SpikeStats(
            self.spikes_per_layer_step + other.spikes_per_layer_step,
            self.flag_spikes + other.flag_spikes,
            self.clipped + other.clipped,
            self.numel + other.numel,
        )


def mhse_weights(layers: int, base: float = 2.0, n_int: int = 1) -> list[float]:
    """Layer weights ``w_i = base ** (n_int - i)``, ``i = 1..layers``, largest first (eq. 4's W_i)."""
    _check_layout(1, layers, base)
    return [float(base) ** (n_int - i) for i in range(1, layers + 1)]


def mhse_a_max(layers: int, base: float = 2.0, n_int: int = 1) -> float:
    """Largest magnitude ``|x| / s`` one time step can emit: ``sum_i w_i`` (``2**n_int (1 - 2**-l)``
    for base 2). Larger magnitudes saturate."""
    return float(sum(mhse_weights(layers, base, n_int)))


def calibrated_scale(stat: Tensor, a_max: float, floor: float = 1e-8) -> Tensor:
    """The float32 scale that puts the calibration statistic on the top level: ``s ~ stat / A_max``.

    Trap: ``s = stat / A_max`` is rounded to float32, and the encoder rounds ``|x| / s`` to float32
    again, so ``stat / s`` lands one ulp *below* ``A_max`` in about one draw in ten; truncation then
    decodes the calibrated maximum one grid step low. Where that happens ``s`` is lowered ulp by
    ulp (once is enough in practice) until the encoder's own magnitude of ``stat`` reaches
    ``A_max`` (it is clipped there). Elementwise, for per-tensor and per-channel statistics; scales
    below ``floor`` (an all-zero site) are floored and left alone. Calibration time only: the
    loop reads values back to the host.
    """
    stat = stat.detach().float()
    s = (stat.double() / a_max).float().clamp(min=floor)
    for _ in range(8):
        # the encoder's magnitude: float64 quotient rounded to float32 (= the float32 quotient)
        short = ((stat.double() / s.double()).float() < a_max) & (s > floor)
        if not bool(short.any()):
            break
        s = torch.where(short, torch.nextafter(s, torch.zeros_like(s)), s)
    return s


def check_scale(scale: Tensor) -> None:
    """Refuse a scale that is not finite and > 0 everywhere (a host sync: load and calibration time)."""
    if not bool(((scale > 0) & torch.isfinite(scale)).all()):
        raise ValueError("every spike-encoding scale must be finite and > 0")


def _check_layout(T: int, layers: int, base: float) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"the number of time steps T must be an integer >= 1, got {T!r}")
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"the number of spike layers must be an integer >= 1, got {layers!r}")
    if not base > 1.0:
        raise ValueError(f"the weight base must be > 1, got {base!r}")


def _check_exact(T: int, layers: int, base: float) -> None:
    """The closed form is exact for base 2 within the limits of the module docstring."""
    _check_layout(T, layers, base)
    if base != 2.0:
        raise ValueError(
            f"the closed form needs base 2 (got {base!r}): for other bases the cascade does not emit "
            "greedy digits per step; use mhse_simulate"
        )
    if T > MAX_T or layers > MAX_LAYERS:
        raise ValueError(f"exact encoding needs T <= {MAX_T} and layers <= {MAX_LAYERS}, got T={T}, layers={layers}")


def _scale64(scale: float | Tensor, shape: torch.Size, device: torch.device, validate: bool = True) -> Tensor:
    """The scale as float64 on ``device``, checked broadcastable to ``shape`` and, if ``validate``,
    positive and finite. The value check reads the tensor back to the host (a device sync), so the
    hot paths skip it: a converted model's scales are checked once, at calibration and at load."""
    s = torch.as_tensor(scale, dtype=torch.float64, device=device).detach()
    try:
        broadcast_ok = torch.broadcast_shapes(shape, s.shape) == shape
    except RuntimeError:
        broadcast_ok = False
    if not broadcast_ok:
        raise ValueError(f"scale of shape {tuple(s.shape)} does not broadcast to values of shape {tuple(shape)}")
    if validate and not bool(((s > 0) & torch.isfinite(s)).all()):
        raise ValueError("every scale must be finite and > 0")
    return s


def _magnitude(x: Tensor, s: Tensor, a_max: float, check_nan: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """``a = min(|x| / s, A_max)`` in float64 holding a float32 value; the flags ``x < 0``; and the
    mask of values inside the representable range (not clipped). ``check_nan`` refuses NaN inputs
    (a host sync; the training fast path skips it and lets NaN propagate)."""
    if not x.is_floating_point():
        raise TypeError(f"spike encoding takes a floating-point tensor, got {x.dtype}")
    x = x.detach()
    # Rounded to float32 once: the 24-bit significand is what makes every later step exact.
    a = (x.abs().to(torch.float64) / s).to(torch.float32).to(torch.float64)  # x.shape
    if check_nan and bool(torch.isnan(a).any()):
        raise ValueError("cannot spike-encode NaN values")
    inside = a <= a_max
    return a.clamp(max=a_max), x < 0, inside


def _assemble(total: Tensor, flags: Tensor, s: Tensor, T: int, dtype: torch.dtype) -> Tensor:
    """Eq. (3): signed ``s * total / T`` (``total`` = emitted weight sum, float64) in ``dtype``.
    Both implementations go through here so that their float rounding is the same."""
    magnitude = total / T * s
    return torch.where(flags, -magnitude, magnitude).to(dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward: the decoded value. Backward: identity where ``|x| / s <= A_max``, zero where clipped."""

    @staticmethod
    def forward(ctx, x: Tensor, x_hat: Tensor, inside: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(inside)
        return x_hat.clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad_out * inside.to(grad_out.dtype), None, None


def decode(spikes: Tensor, flags: Tensor, scale: float | Tensor, weights: list[float], dtype: torch.dtype = torch.float32) -> Tensor:
    """Eq. (3)-(4): values from a spike tensor (T, l, *shape) bool and flags (*shape) bool.

    ``T`` is ``spikes.shape[0]``; ``weights`` as from ``mhse_weights``. Returns (*shape) in ``dtype``.
    """
    T, layers = spikes.shape[0], spikes.shape[1]
    if layers != len(weights):
        raise ValueError(f"spikes have {layers} layers but {len(weights)} weights were given")
    s = _scale64(scale, flags.shape, flags.device)
    total = torch.zeros(spikes.shape[2:], dtype=torch.float64, device=spikes.device)
    for i, w in enumerate(weights):
        total = total + w * spikes[:, i].sum(0).to(torch.float64)  # exact for base 2: multiples of w_l
    return _assemble(total, flags, s, T, dtype)


def mhse_simulate(
    x: Tensor,
    scale: float | Tensor,
    T: int,
    layers: int,
    base: float = 2.0,
    n_int: int = 1,
    init_half: bool = False,
) -> tuple[Tensor, SpikeStats, Tensor, Tensor]:
    """Encode by literally stepping the IF cascade through ``T`` steps and ``l`` layers.

    For inspection and teaching; any base > 1. Returns ``(x_hat, stats, spikes, flags)``: decoded
    values in ``x.dtype``, counts, spikes (T, l, *x.shape) bool, flags (*x.shape) bool.

    Saturated values (``|x| / s >= A_max``) fire every layer at every step, as the exact cascade
    does (charge ``A_max`` and the layers remove exactly ``sum_i w_i``, leaving the residual where
    it was). They are not stepped in floats: for a base other than 2 the weights are inexact and
    ``A_max - w_1 - w_2 ...`` in float64 can end just below ``w_l`` (base 3, 4 layers: the last
    layer missed its spike, and every saturated value decoded one grid step low).
    """
    _check_layout(T, layers, base)
    weights = mhse_weights(layers, base, n_int)
    a_max = mhse_a_max(layers, base, n_int)  # the same float sum that decode() adds up
    s = _scale64(scale, x.shape, x.device)
    a, flags, inside = _magnitude(x, s, a_max)
    saturated = a >= a_max  # a is clipped, so this is a == A_max

    # Membrane in float64 (the same units as a): exact for base 2, see the module docstring.
    v = torch.full_like(a, weights[-1] / 2 if init_half else 0.0)  # x.shape
    a = torch.where(saturated, 0.0, a)  # saturated membranes stay at their start (see above)
    spikes = torch.zeros((T, layers, *x.shape), dtype=torch.bool, device=x.device)
    for j in range(T):
        v = v + a  # charge
        for i, w in enumerate(weights):
            fired = v >= w  # fire: layer i's IF neuron, threshold w_i
            v = torch.where(fired, v - w, v)  # reset by subtraction: the residual goes on down
            spikes[j, i] = fired | saturated

    stats = SpikeStats(
        spikes_per_layer_step=spikes.reshape(T, layers, -1).sum(-1).cpu(),
        flag_spikes=int(flags.sum()),
        clipped=int((~inside).sum()),
        numel=x.numel(),
    )
    return decode(spikes, flags, s, weights, x.dtype), stats, spikes, flags


def _units(
    x: Tensor, scale: float | Tensor, layers: int, n_int: int, init_half: bool, validate: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """Common start of the closed forms: (A in units of w_l, flags, inside mask, scale, offset c)."""
    s = _scale64(scale, x.shape, x.device, validate)
    a, flags, inside = _magnitude(x, s, mhse_a_max(layers, 2.0, n_int), check_nan=validate)
    units = a * 2.0 ** (layers - n_int)  # exact power-of-two scaling; in [0, 2**l - 1]
    return units, flags, inside, s, 0.5 if init_half else 0.0


def _emitted(units: Tensor, c: float, j: int) -> Tensor:
    """``q_j = floor(c + j * A)``: units emitted by the cascade in its first ``j`` steps, as an
    integer-valued float64 (exact: below 2**40)."""
    return torch.floor(units * j + c)


def _bit_table(layers: int, device: torch.device) -> Tensor:
    """(2**l, l) int64: row ``d`` holds the bits of ``d``, most significant (layer 1) first."""
    shifts = torch.arange(layers - 1, -1, -1, device=device)
    return (torch.arange(2**layers, device=device)[:, None] >> shifts) & 1


def _layer_totals(d: Tensor, layers: int, table: Tensor | None) -> Tensor:
    """Spikes per layer in one step whose per-element emissions are ``d``: (l,) int64 on CPU."""
    if table is not None:  # one pass: histogram of emissions, then bits of each bin
        hist = torch.bincount(d.reshape(-1), minlength=2**layers)
        return (hist[:, None] * table).sum(0).cpu()
    return torch.stack([((d >> (layers - i)) & 1).sum() for i in range(1, layers + 1)]).cpu()


def mhse_closed_form(
    x: Tensor,
    scale: float | Tensor,
    T: int,
    layers: int,
    base: float = 2.0,
    n_int: int = 1,
    init_half: bool = False,
    *,
    stats: bool = True,
    with_spikes: bool = False,
    straight_through: bool = False,
) -> tuple[Tensor, SpikeStats | None, Tensor | None]:
    """The fast path: the same decoded values and spikes as ``mhse_simulate``, without time steps.

    Base 2 only (module docstring). Returns ``(x_hat, stats, spikes)``: ``x_hat`` in ``x.dtype``;
    ``stats`` unless ``stats=False`` (then None; skips T histogram passes); ``spikes``
    (T, l, *x.shape) bool only if ``with_spikes``. ``straight_through``: ``x_hat`` carries gradient
    identity to ``x`` inside the representable range (zero where clipped), for fine-tuning a
    converted model; otherwise ``x_hat`` is detached. The scale receives no gradient.
    """
    _check_exact(T, layers, base)
    # The checks of scale and NaN read values back to the host; with neither statistics nor spikes
    # requested (the straight-through training path) they are skipped to keep the step sync-free.
    units, flags, inside, s, c = _units(x, scale, layers, n_int, init_half, validate=stats or with_spikes)
    w_l = 2.0 ** (n_int - layers)

    q_T = _emitted(units, c, T)  # x.shape, integer-valued float64, <= T * (2**l - 1)
    x_hat = _assemble(q_T * w_l, flags, s, T, x.dtype)
    if straight_through:
        x_hat = _StraightThrough.apply(x, x_hat, inside)

    result_stats: SpikeStats | None = None
    spikes: Tensor | None = None
    if stats or with_spikes:
        table = _bit_table(layers, x.device) if layers <= _HISTOGRAM_MAX_LAYERS else None
        counts = torch.zeros((T, layers), dtype=torch.int64)
        if with_spikes:
            spikes = torch.empty((T, layers, *x.shape), dtype=torch.bool, device=x.device)
        q_prev = torch.zeros_like(q_T)  # q_0 = floor(c) = 0
        for j in range(1, T + 1):
            q_j = q_T if j == T else _emitted(units, c, j)
            d = (q_j - q_prev).to(torch.int64)  # units emitted at step j, in [0, 2**l - 1]
            if stats:
                counts[j - 1] = _layer_totals(d, layers, table)
            if spikes is not None:
                for i in range(1, layers + 1):
                    spikes[j - 1, i - 1] = ((d >> (layers - i)) & 1).bool()
            q_prev = q_j
        if stats:
            result_stats = SpikeStats(counts, int(flags.sum()), int((~inside).sum()), x.numel())
    return x_hat, result_stats, spikes


def floor_half_up_(u: Tensor, tmp: Tensor) -> Tensor:
    """``u = floor(u + 1/2)`` in place, exactly, for non-negative float ``u`` (``tmp``: same shape,
    overwritten). ``u + 1/2`` itself can round up in float32 (``u = 1/2 - 2**-25``); instead
    ``floor(u) + floor(2 (u - floor(u)))``, where ``u - floor(u)`` and its double are exact."""
    torch.floor(u, out=tmp)
    return u.sub_(tmp).mul_(2.0).floor_().add_(tmp)


def mhse_decode(
    x: Tensor,
    scale: float | Tensor,
    T: int,
    layers: int,
    n_int: int = 1,
    init_half: bool = False,
    on_levels: Callable[[Tensor], object] | None = None,
    backend: Backend = None,
) -> Tensor:
    """Decoded values only: bit for bit ``mhse_closed_form(...)[0]``, in fewer passes over memory.

    This is the converted model's hot path (no statistics, no clip mask, no gradient). It performs
    the closed form's float operations in the same order, so the results are identical: ``|x| / s``
    in float64 rounded once to float32, clipped at ``A_max`` (exact in float32 for ``l <= 24``),
    scaled to units of ``w_l`` (a power of two), ``floor(c + T * A)`` in float64, then
    ``q * w_l / T * s`` and the sign. Base 2 only.

    No host syncs: it reads no value back to check it (one such read per encoded site stalled a
    GPU twice per site and token). The scale is the caller's to validate (a converted model checks
    its scales at calibration and at load); a NaN input decodes to NaN, as any layer would pass it on.

    The general path (``T > 1``) is :func:`spikelm.ops.spikes.decode_steps` (op ``mhse_decode``:
    on the CPU a C++ pass performing the same float operations in the same order, so the same bits).

    ``backend``: the general path's implementation (:mod:`spikelm.ops.backend`).

    Observation point, for counters outside the model (one step, ``T = 1``, float32 scale only):
    ``on_levels(q)`` sees the integer levels ``q = floor(min(|x| / (s w_l), 2**l - 1))`` (float32;
    ``floor(. + 1/2)`` with ``init_half``), whose bits are the layers' spikes. It is called with
    this function's own working tensor, which it then changes in place: read it, do not keep or
    modify it. What it returns is ignored.
    """
    _check_exact(T, layers, 2.0)
    if not x.is_floating_point():
        raise TypeError(f"spike encoding takes a floating-point tensor, got {x.dtype}")
    s = _scale64(scale, x.shape, x.device, validate=False)
    x = x.detach()
    a_max = mhse_a_max(layers, 2.0, n_int)
    low = x.dtype in (torch.bfloat16, torch.float16)
    if T == 1 and (x.dtype == torch.float32 or low) and isinstance(scale, Tensor) and scale.dtype == torch.float32:
        # All in float32, still equal value for value: a float32 quotient equals the float64 one
        # rounded to float32 (double rounding is innocuous for division when 53 >= 2 * 24 + 2,
        # Figueroa 1995); floor of a float32 and products by powers of two are exact (so dividing
        # by s * w_l is dividing by s and scaling, and multiplying back by s * w_l is scaling and
        # multiplying by s); the final product of two float32 numbers is exact in float64, so
        # rounding it once to float32 is the float32 product. Six passes over memory; the sign is
        # copied bit-wise (copysign), without a boolean mask and a select (about three times
        # dearer on a CPU). Only a negative zero input differs in bits: it decodes to -0.0, not
        # +0.0 (equal values). A bf16/fp16 input is exact in float32; its decoded value is rounded
        # once from the exact float64 product to its dtype, as in the general path (rounding to
        # float32 first could double-round).
        unit = scale.detach().to(x.device) * 2.0 ** (n_int - layers)  # s * w_l, exact
        u = (x.float().abs_() if low else x.abs()).div_(unit).clamp_(max=a_max * 2.0 ** (layers - n_int))
        q = floor_half_up_(u, torch.empty_like(u)) if init_half else u.floor_()
        if on_levels is not None:
            on_levels(q)
        if low:
            return q.double().mul_(unit.double()).copysign_(x).to(x.dtype)
        return q.mul_(unit).copysign_(x)
    # the general path (rate codes, T > 1): spikelm.ops.spikes, whose C++ kernel does these float
    # operations in their order on the CPU
    return decode_steps(x, scale if isinstance(scale, Tensor) else s, s, T, layers, n_int, init_half, a_max, backend)


def mhse_spike_counts(
    x: Tensor,
    scale: float | Tensor,
    T: int,
    layers: int,
    base: float = 2.0,
    n_int: int = 1,
    init_half: bool = False,
) -> Tensor:
    """Layer spikes per value over all ``T`` steps (flag excluded), int64 of ``x.shape``, without
    the spike tensor: the sum over steps of the popcount of each step's emission ``d_j``."""
    _check_exact(T, layers, base)
    units, _, _, _, c = _units(x, scale, layers, n_int, init_half)
    popcount = _bit_table(layers, x.device).sum(1) if layers <= _HISTOGRAM_MAX_LAYERS else None
    total = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
    q_prev = torch.zeros_like(units)
    for j in range(1, T + 1):
        q_j = _emitted(units, c, j)
        d = (q_j - q_prev).to(torch.int64)
        if popcount is not None:
            total += popcount[d]
        else:
            for shift in range(layers):
                total += (d >> shift) & 1
        q_prev = q_j
    return total


def rate_simulate(x: Tensor, scale: float | Tensor, T: int, init_half: bool = False) -> tuple[Tensor, SpikeStats, Tensor, Tensor]:
    """Rate (repetition) coding, SNN-RWKV: one IF neuron of threshold ``s`` per value plus the
    flag; ``|x| / s`` clipped to [0, 1]. Same outputs as ``mhse_simulate`` (spikes (T, 1, ...))."""
    return mhse_simulate(x, scale, T, layers=1, base=2.0, n_int=1, init_half=init_half)


def rate_closed_form(
    x: Tensor,
    scale: float | Tensor,
    T: int,
    init_half: bool = False,
    *,
    stats: bool = True,
    with_spikes: bool = False,
    straight_through: bool = False,
) -> tuple[Tensor, SpikeStats | None, Tensor | None]:
    """Rate coding by the closed form: ``s * floor(c + T a) / T`` with ``a = min(|x| / s, 1)``."""
    return mhse_closed_form(
        x, scale, T, layers=1, base=2.0, n_int=1, init_half=init_half,
        stats=stats, with_spikes=with_spikes, straight_through=straight_through,
    )


def spike_encode(
    x: Tensor,
    scale: float | Tensor,
    method: str = "mhse",
    T: int = 1,
    layers: int = 4,
    base: float = 2.0,
    n_int: int = 1,
    init_half: bool = False,
    *,
    stats: bool = True,
    straight_through: bool = False,
) -> tuple[Tensor, SpikeStats | None]:
    """Encode and decode ``x`` by name (``mhse`` or ``rate``) through the closed form.

    ``rate`` needs ``layers == 1`` and ignores ``base`` and ``n_int`` (its single weight is 1).
    Returns ``(x_hat, stats)`` as ``mhse_closed_form``.
    """
    if method == "mhse":
        x_hat, st, _ = mhse_closed_form(x, scale, T, layers, base, n_int, init_half, stats=stats, straight_through=straight_through)
    elif method == "rate":
        if layers != 1:
            raise ValueError(f"rate coding has one spike layer; got layers={layers}")
        x_hat, st, _ = rate_closed_form(x, scale, T, init_half, stats=stats, straight_through=straight_through)
    else:
        raise ValueError(f"unknown encoding method {method!r}; choose one of {', '.join(METHODS)}")
    return x_hat, st
