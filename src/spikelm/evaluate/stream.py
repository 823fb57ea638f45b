"""THE chunked stream: feed token ids through a recurrent model in time chunks, state carried.

A recurrent model reads any length of text in chunks of ``chunk`` tokens, the state of one chunk
being the initial state of the next, so memory is bounded by one chunk's logits and every token is
still predicted from the whole text before it. Perplexity (:mod:`.perplexity`), multiple-choice
scoring (:mod:`.multiple_choice`) and the energy counters (:mod:`spikelm.energy`) all read text this
way, through :func:`forward_chunks`; :func:`nll_sum` adds the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..generate import accepts_last_only

__all__ = ["Shifted", "forward_chunks", "nll_sum", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class Shifted:
    """Inputs ``[bos] + tokens[:-1]`` and targets ``tokens`` as (1, n) rows, sliced lazily.

    ``inputs[:, a:b]`` and ``targets[:, a:b]`` read only that slice of ``tokens`` (a memmap stays
    on disk).
    """

    def __init__(self, tokens: np.ndarray | Sequence[int], bos: int) -> None:
        self.tokens, self.bos, self.n = tokens, int(bos), len(tokens)
        self.inputs = _Row(self._inputs, self.n)
        self.targets = _Row(self._targets, self.n)

    def _inputs(self, a: int, b: int) -> np.ndarray:
        if a == 0:
            return np.concatenate(([self.bos], np.asarray(self.tokens[0 : b - 1], dtype=np.int64))).astype(np.int64)
        return np.asarray(self.tokens[a - 1 : b - 1], dtype=np.int64)

    def _targets(self, a: int, b: int) -> np.ndarray:
        return np.asarray(self.tokens[a:b], dtype=np.int64)


class _Row:
    """A lazy (1, n) array: ``row[:, a:b]`` calls ``fetch(a, b)``."""

    def __init__(self, fetch: Any, n: int) -> None:
        self.fetch, self.shape = fetch, (1, n)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        _, cols = key
        a, b, _ = cols.indices(self.shape[1])
        return self.fetch(a, b)[None]


def _as_tensor(x: Any, device: torch.device) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(device)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(device)


def forward_chunks(model: nn.Module, x: Any, chunk: int, state: Any = None, *, last_only: bool = False,
                   device: torch.device | None = None) -> Iterator[tuple[int, int, Tensor, Any]]:
    """Feed ``x`` (B, L) in time chunks of ``chunk`` tokens, carrying the state.

    ``x`` is a tensor, an array, a memmap or a :class:`Shifted` row: anything sliced as
    ``x[:, a:b]`` with a ``shape``. Yields ``(a, b, logits, state)`` per chunk, ``logits`` (B, b-a, V)
    (or (B, 1, V) with ``last_only``: the last position only; the head of a model that supports it
    then runs on that position alone).
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1, got {chunk}")
    device = device or model_device(model)
    fast_last = last_only and accepts_last_only(model)
    L = x.shape[1]
    for a in range(0, L, chunk):
        b = min(L, a + chunk)
        xb = _as_tensor(x[:, a:b], device)
        if fast_last:
            logits, state = model(xb, state, last_only=True)
        else:
            logits, state = model(xb, state)
            if last_only:
                logits = logits[:, -1:]
        yield a, b, logits, state


def nll_sum(model: nn.Module, x: Any, y: Any, chunk: int, state: Any = None,
            device: torch.device | None = None, on_chunk: Callable[[int, int], None] | None = None) -> tuple[Tensor, Any]:
    """Total negative log-likelihood in nats of targets ``y`` given inputs ``x`` (both (B, L)), per row.

    Returns ``(nats (B,) float64, final state)``. The sum stays on the model's device (no host
    synchronisation per chunk). ``on_chunk(b, L)`` is called after each chunk (progress).
    """
    device = device or model_device(model)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=device)
    for a, b, logits, state in forward_chunks(model, x, chunk, state, device=device):
        yb = _as_tensor(y[:, a:b], device)
        logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # bf16 loses ~3 digits
        nll = F.cross_entropy(logits.transpose(1, 2), yb, reduction="none")  # (B, t)
        total += nll.double().sum(dim=1)
        if on_chunk is not None:
            on_chunk(b, x.shape[1])
    return total, state
