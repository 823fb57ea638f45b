"""Helpers of the training tests: a generated text, tiny run arguments, child-process environments."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spikelm.runargs import TrainArgs

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = {"kind": "rwkv6", "n_layer": 1, "n_embd": 32, "head_size": 16}


def make_text(n_sentences: int = 1500, seed: int = 0) -> str:
    """Deterministic English-like text: enough structure to learn, small enough to prepare instantly."""
    rng = np.random.default_rng(seed)
    subj = ["the cat", "a dog", "my friend", "the old man", "she", "we", "the teacher", "a bird"]
    verb = ["sees", "likes", "finds", "carries", "paints", "watches", "follows", "remembers"]
    obj = ["the red ball", "a small house", "the river", "an apple", "the long road", "a green tree"]
    end = [".", " today.", " again.", " in the morning.", " at night."]
    out = []
    for i in range(n_sentences):
        s = f"{subj[rng.integers(len(subj))]} {verb[rng.integers(len(verb))]} {obj[rng.integers(len(obj))]}{end[rng.integers(len(end))]}"
        out.append(s[0].upper() + s[1:] + ("\n" if i % 6 == 5 else " "))
    return "".join(out)


# Fixtures (imported by the test modules: a conftest.py here would shadow tests/conftest.py, which
# other test folders import by name).
@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> tuple[str, Path]:
    """(data source string, cache folder) of a prepared tiny corpus, shared by the session."""
    from spikelm.data.build import prepare

    root = tmp_path_factory.mktemp("train-data")
    (root / "tiny.txt").write_text(make_text())
    cache = root / "cache"
    old = os.environ.get("SPIKELM_CACHE")
    os.environ["SPIKELM_CACHE"] = str(cache)
    try:
        prepare(f"text:{root / 'tiny.txt'}")  # once, before any child process starts
    finally:
        os.environ.pop("SPIKELM_CACHE") if old is None else os.environ.__setitem__("SPIKELM_CACHE", old)
    return f"text:{root / 'tiny.txt'}", cache


@pytest.fixture
def tiny_data(data_root, monkeypatch) -> str:
    monkeypatch.setenv("SPIKELM_CACHE", str(data_root[1]))
    return data_root[0]


def tiny_args(data: str, out_dir: Path, **kw) -> TrainArgs:
    d = dict(model=dict(TINY_MODEL), data=data, ctx_len=16, batch_size=4, max_steps=8, warmup_steps=2, lr=3e-3,
             min_lr=3e-4, eval_every=4, eval_batches=1, log_every=1, device="cpu", precision="fp32", out_dir=str(out_dir))
    d.update(kw)
    return TrainArgs.from_dict(d)


def child_env(cache: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), SPIKELM_CACHE=str(cache))


def same_weights(a: Path, b: Path) -> None:
    """Assert two saved models are bitwise equal."""
    import spikelm

    sa, sb = spikelm.load(a).state_dict(), spikelm.load(b).state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


PY = sys.executable
