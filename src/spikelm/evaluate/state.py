"""Copying, repeating, joining and selecting batch rows of a model's recurrent state.

A state is a nested list / tuple / dict of tensors with the batch on dim 0 (every spikelm model's
state is one). The multiple-choice scorer runs a shared prefix once and continues each choice from
a copy of its state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import SpikelmError

__all__ = ["State", "clone_state", "expand_state", "concat_states", "select_state", "check_batch"]

State = Any  # nested list / tuple / dict of tensors with the batch on dim 0, or None


def _map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: _map_state(fn, v) for k, v in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # namedtuple
        return type(state)(*(_map_state(fn, v) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(_map_state(fn, v) for v in state)
    raise TypeError(
        f"cannot copy a recurrent state containing {type(state).__name__}; the scorer supports states that are "
        "nested lists / tuples / dicts of tensors with the batch on dim 0"
    )


def _tensors(state: State) -> list[Tensor]:
    out: list[Tensor] = []
    _map_state(lambda t: out.append(t) or t, state)
    return out


def clone_state(state: State) -> State:
    """A deep copy, so that a model updating its state in place cannot corrupt a shared prefix."""
    return _map_state(lambda t: t.clone(), state)


def expand_state(state: State, n: int) -> State:
    """Repeat every batch row ``n`` times (row ``b`` becomes rows ``b*n .. b*n+n-1``).

    A batch-1 prefix state becomes the state of ``n`` sequences continuing that prefix. The
    copies are materialised (not broadcast views), since models may write into their state.
    """
    return _map_state(lambda t: t.repeat_interleave(n, dim=0), state)


def concat_states(states: Sequence[State]) -> State:
    """Join states of identical structure along the batch dimension."""
    first = states[0]
    if len(states) == 1:
        return first
    flat = [_tensors(s) for s in states]
    if any(len(f) != len(flat[0]) for f in flat):
        raise ValueError("cannot concatenate recurrent states of different structure")
    it = iter(torch.cat(parts, dim=0) for parts in zip(*flat))
    return _map_state(lambda _t: next(it), first)


def select_state(state: State, rows: Sequence[int]) -> State:
    """The batch rows ``rows`` of a state, as a new (copied) state."""
    return _map_state(lambda t: t[torch.as_tensor(rows, dtype=torch.long, device=t.device)], state)


def check_batch(state: State, batch: int) -> None:
    for t in _tensors(state):
        if t.dim() == 0 or t.shape[0] != batch:
            raise SpikelmError(
                f"the model's recurrent state holds a tensor of shape {tuple(t.shape)} for a batch of {batch}; "
                "state reuse needs every state tensor to have the batch on dim 0 (score with state_reuse=False)"
            )
