"""The parts of a run that read and record: the fixed validation windows and the validation loss on
them (:func:`validate`), and the run's log files (:class:`RunLog`)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SpikelmError
from ..io import atomic_write_text
from ..ops.cross_entropy import cross_entropy_fp32
from .distributed import Dist, autocast

__all__ = ["LOG_FIELDS", "RunLog", "validate", "validation_starts"]

LOG_FIELDS = ("step", "tokens", "loss", "val_loss", "lr", "tokens_per_s", "elapsed_s")


def validation_starts(n_tokens: int, ctx_len: int, n_windows: int) -> np.ndarray:
    """Evenly spaced window starts over the validation split: a fixed set, the same every eval."""
    last = n_tokens - ctx_len - 1
    if last < 0:
        raise SpikelmError(f"the validation split has {n_tokens:,} tokens, too few for ctx_len={ctx_len}; lower ctx_len")
    return np.unique(np.linspace(0, last, n_windows).round().astype(np.int64))


@torch.no_grad()
def validate(model: nn.Module, tokens: np.ndarray, starts: np.ndarray, ctx_len: int, micro_batch: int,
              device: torch.device, amp: torch.dtype | None, dist: Dist, lockstep: bool = False) -> float:
    """Mean next-token loss (nats) over the fixed windows; each process scores its share.

    ``lockstep``: every process runs the same number of forward passes (a sharded model gathers
    its parameters in each, a collective); a process whose share is spent scores a window again
    and counts nothing."""
    was_training = model.training
    model.eval()
    share = np.array_split(starts, dist.world_size)[dist.rank]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of NLL, number of tokens)
    longest = -(-len(starts) // dist.world_size)  # np.array_split makes the first shares the longest
    passes = -(-(longest if lockstep else len(share)) // micro_batch)
    for i in range(0, passes * micro_batch, micro_batch):
        rows = share[i : i + micro_batch]
        counted = len(rows) > 0
        rows = np.stack([np.asarray(tokens[s : s + ctx_len + 1], dtype=np.int64) for s in (rows if counted else starts[:1])])
        both = torch.from_numpy(rows).to(device)
        with autocast(device, amp):
            logits, _ = model(both[:, :-1])
        if not counted:
            continue
        nll = cross_entropy_fp32(logits.flatten(0, 1), both[:, 1:].flatten(), reduction="sum")
        total[0] += nll.double()
        total[1] += both[:, 1:].numel()
    total = dist.sum(total)
    model.train(was_training)
    return float(total[0] / total[1])


class RunLog:
    """``log.csv`` and ``log.jsonl`` in out_dir (rank 0 only); rows are flushed as they come."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None, extra_fields: tuple[str, ...] = ()) -> None:
        self.enabled = enabled
        self.fields = LOG_FIELDS + tuple(extra_fields)
        self.csv_path, self.jsonl_path = out_dir / "log.csv", out_dir / "log.jsonl"
        self.history: list[dict[str, Any]] = []
        if not enabled:
            return
        if resume_step is not None and self.jsonl_path.is_file():
            # Keep the rows up to the checkpoint; later rows belong to the steps about to be redone.
            for line in self.jsonl_path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if isinstance(row, dict) and row.get("step", math.inf) <= resume_step:
                        self.history.append(row)
        self._rewrite()

    def _rewrite(self) -> None:
        atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in self.history))
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.csv_path, buf.getvalue())

    def append(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if not self.enabled:
            return
        buf = io.StringIO()
        csv.DictWriter(buf, self.fields, extrasaction="ignore").writerow(row)
        for path, line in ((self.jsonl_path, json.dumps(row) + "\n"), (self.csv_path, buf.getvalue())):
            _append(path, line.encode())


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` whole or not at all: a full disk leaves no half row behind."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)
