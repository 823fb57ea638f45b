"""A time budget decays the learning rate to min_lr by its end (issue 27, item 10).

Before, ``--max-minutes 3`` with ``max_steps: 600`` stopped at step 72 with the rate at 1.98e-3 of
its 2e-3 peak: the cosine followed the steps, and the budget ended it long before they did.
"""

from __future__ import annotations

import json
import math

from spikelm.train import train
from spikelm.train.loop import lr_at

from train_helpers import tiny_args

pytest_plugins = ["train_helpers"]  # its fixtures (a conftest.py here would shadow tests/conftest.py)


def test_a_ten_second_budget_ends_at_min_lr(tiny_data, tmp_path, caplog):
    caplog.set_level("INFO", logger="spikelm.train")
    args = tiny_args(tiny_data, tmp_path / "run", max_steps=100_000, max_minutes=10 / 60, warmup_steps=3,
                     eval_every=0, log_every=1, lr=3e-3, min_lr=3e-5)
    result = train(args, progress=False)
    lrs = [row["lr"] for row in result.history]
    assert result.stopped_by == "max_minutes" and result.steps < args.max_steps
    assert len(lrs) == result.steps > args.warmup_steps + 3
    assert lrs[-1] == args.min_lr  # the last step runs at min_lr exactly
    after = lrs[args.warmup_steps:]
    assert all(b <= a for a, b in zip(after, after[1:]))  # the cosine only goes down
    assert after[0] > 0.5 * args.lr  # ... from near the peak
    warm = lrs[: args.warmup_steps]  # the warm-up counts steps (never above the cosine of the budget)
    assert warm[0] == args.lr / args.warmup_steps and all(a < b for a, b in zip(warm, warm[1:]))
    assert all(x <= args.lr * (i + 1) / args.warmup_steps for i, x in enumerate(warm))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "time budget" in summary["lr_schedule"] and summary["final_lr"] == args.min_lr
    assert any("learning rate: " in r.message and "time budget" in r.message for r in caplog.records)


def test_lr_at_follows_the_larger_of_the_two_fractions(tiny_data, tmp_path):
    args = tiny_args(tiny_data, tmp_path, max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    cosine = lambda f: 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * f))  # noqa: E731
    assert lr_at(50, args) == cosine(40 / 89)  # no budget: the steps
    assert lr_at(50, args, time_fraction=0.9) == cosine(0.9)  # the budget ends first
    assert lr_at(95, args, time_fraction=0.1) == cosine(85 / 89)  # the steps end first
    assert lr_at(50, args, time_fraction=1.0) == 1e-4 and lr_at(99, args) == 1e-4
    assert lr_at(3, args, time_fraction=0.2) == 4e-4  # warm-up: the step's rate, below the cosine
    assert lr_at(3, args, time_fraction=1.0) == 1e-4  # a budget that ends inside the warm-up: min_lr at its end
