"""Training batches from token memmaps, without loading the corpus into RAM.

The batch at step ``k`` is a pure function of ``(seed, k)``: its window starts come from a numpy
``Generator`` seeded with ``[seed, k]``.  That one rule gives the three properties training
relies on:

* **determinism** — the same seed gives the same batches on any machine;
* **exact resume** — the sampler's state is just the step counter, so a run restored from a
  checkpoint continues with exactly the batches it would have seen;
* **DDP equivalence** — ``batch_size`` is the *global* batch; every rank draws the same global
  starts and keeps only its own contiguous block of rows ``[r*B/W, (r+1)*B/W)``, so a
  2-process run sees, step for step, the rows of the 1-process run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..errors import DataError

__all__ = ["BatchSampler", "sequential_windows"]


class BatchSampler:
    """Random windows ``(x, y)`` of ``ctx_len`` tokens, ``y`` being ``x`` shifted by one.

    Args:
        tokens: the token ids (a memmap from :meth:`Corpus.tokens`; only the windows are read).
        batch_size: the global batch size B (all ranks together); must be divisible by world_size.
        ctx_len: tokens per row.
        seed: non-negative seed; batch ``k`` depends only on ``(seed, k)``.
        rank, world_size: this process's rank; it receives rows ``[rank*B/W, (rank+1)*B/W)``.

    Iterating yields int64 tensors of shape ``(B / world_size, ctx_len)`` forever; ``step`` is
    the index of the next batch.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, ctx_len: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if ctx_len < 1 or batch_size < 1:
            raise DataError(f"batch_size and ctx_len must be positive, got {batch_size} and {ctx_len}")
        if len(tokens) < ctx_len + 2:
            raise DataError(
                f"{len(tokens):,} tokens are too few for windows of ctx_len={ctx_len} (+1 target); "
                "use a smaller ctx_len or a larger corpus"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size % world_size:
            raise DataError(f"the global batch_size {batch_size} is not divisible by world_size {world_size}; pick a multiple")
        if seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}")
        self.tokens = tokens
        self.batch_size, self.ctx_len, self.seed = batch_size, ctx_len, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = batch_size // world_size
        self.step = 0

    def starts(self, step: int) -> np.ndarray:
        """The global batch's window starts at ``step``: ``batch_size`` values in ``[0, n - ctx_len - 1]``."""
        rng = np.random.default_rng([self.seed, step])
        # A window needs ctx_len + 1 tokens (inputs and the shifted targets).
        return rng.integers(0, len(self.tokens) - self.ctx_len, size=self.batch_size)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the batch at ``step`` (does not move the step counter)."""
        lo = self.rank * self.local_batch
        starts = self.starts(step)[lo : lo + self.local_batch]
        # One gather over the memmap: only the pages under these windows are read.
        rows = np.asarray(self.tokens[starts[:, None] + np.arange(self.ctx_len + 1)]).astype(np.int64)  # (b, T+1)
        return torch.from_numpy(np.ascontiguousarray(rows[:, :-1])), torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume with the same batches (the step, plus checks)."""
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size, "ctx_len": self.ctx_len, "n_tokens": len(self.tokens)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved step; the seed, global batch, context and data must be the same.

        The world size may differ: the global batch does not depend on it.
        """
        mine = self.state_dict()
        for key in ("seed", "batch_size", "ctx_len", "n_tokens"):
            if key in state and state[key] != mine[key]:
                raise DataError(
                    f"cannot resume the batch sampler: the checkpoint has {key}={state[key]}, this run {key}={mine[key]}; "
                    "resume with the same data, seed, global batch size and context length"
                )
        self.step = int(state["step"])


def sequential_windows(tokens: np.ndarray, ctx_len: int, max_tokens: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive, non-overlapping windows covering the whole sequence, for evaluation.

    Yields ``(x, y)`` int64 tensors of shape ``(1, L)`` with ``L = ctx_len`` except for a shorter
    last window; every token after the first is predicted exactly once (``len(tokens) - 1``
    targets in all, or the first ``max_tokens`` of them).  A recurrent model that carries its state
    from one window to the next thus scores the sequence exactly as if it were read in one go.
    """
    if ctx_len < 1:
        raise DataError(f"ctx_len must be positive, got {ctx_len}")
    n_targets = len(tokens) - 1
    if max_tokens is not None:
        n_targets = min(n_targets, max_tokens)
    for start in range(0, n_targets, ctx_len):
        end = min(start + ctx_len, n_targets)
        window = torch.from_numpy(np.asarray(tokens[start : end + 1], dtype=np.int64))
        yield window[None, :-1], window[None, 1:]
