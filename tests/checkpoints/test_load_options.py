"""spikelm.load's SpikeGPT / RWKV-4 options (binary_embedding, rescale_every, family) and their
CLI spelling (--binary-embedding, --family through cli.options.load_model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import spikelm
from spikelm.checkpoints.rwkv4 import rwkv4_from_state_dict
from spikelm.cli.options import load_model
from spikelm.errors import CheckpointError
from spikelm.models.rwkv4 import RWKV4
from spikelm.models.rwkv6 import RWKV6, RWKV6Config
from spikelm.models.spikegpt import SpikeGPT, SpikeGPTConfig

FIXTURE = Path(__file__).parents[1] / "models" / "data" / "spikegpt_oracle_v100.pt"


@pytest.fixture
def release(tmp_path):
    """A random release-layout (RWKV-4 keys) checkpoint with a 100-token vocabulary."""
    sd = torch.load(FIXTURE, map_location="cpu", weights_only=True)["state_dict"]
    torch.save(sd, tmp_path / "release.pth")
    return tmp_path / "release.pth", sd


def _logits(model, n=6):
    with torch.no_grad():
        return model(torch.arange(n).view(1, n) % 100)[0]


def test_release_defaults_and_overrides(release):
    path, _ = release
    auto = spikelm.load(path)
    assert isinstance(auto, SpikeGPT) and auto.cfg.binary_embedding is False and auto.cfg.rescale_every == 6
    on = spikelm.load(path, binary_embedding="on", rescale_every=0)
    assert on.cfg.binary_embedding is True and on.cfg.rescale_every == 0
    assert not torch.allclose(_logits(auto), _logits(on))  # the setting reaches the model
    assert load_model(str(path), "cpu", "fp32", binary_embedding="on").cfg.binary_embedding is True
    assert load_model(str(path), "cpu", "fp32", binary_embedding="auto").cfg.binary_embedding is False


def test_family_rwkv4_reads_the_same_file_as_the_ann(release):
    path, sd = release
    ann = spikelm.load(path, family="rwkv4")
    assert isinstance(ann, RWKV4)
    torch.testing.assert_close(_logits(ann), _logits(rwkv4_from_state_dict(sd)))
    assert isinstance(load_model(str(path), "cpu", "fp32", family="rwkv4"), RWKV4)
    assert isinstance(spikelm.load(path, family="spikegpt"), SpikeGPT)
    with pytest.raises(CheckpointError, match="SpikeGPT only"):
        spikelm.load(path, family="rwkv4", binary_embedding="on")


def test_mismatched_family_and_options_are_named_errors(tmp_path):
    spikelm.save(RWKV6(RWKV6Config(vocab_size=50, n_layer=1, n_embd=16, head_size=8)), tmp_path / "r6")
    with pytest.raises(CheckpointError, match="--family rwkv4"):
        spikelm.load(tmp_path / "r6", family="rwkv4")
    with pytest.raises(CheckpointError, match="binary-embedding"):
        spikelm.load(tmp_path / "r6", binary_embedding="off")
    with pytest.raises(CheckpointError, match="family must be"):
        spikelm.load(tmp_path / "r6", family="gpt2")


def test_spikelm_folder_override_of_the_recorded_setting(tmp_path):
    spikelm.save(SpikeGPT(SpikeGPTConfig(vocab_size=50, n_layer=1, n_embd=8)), tmp_path / "sg")
    assert spikelm.load(tmp_path / "sg").cfg.binary_embedding is True  # as recorded
    assert spikelm.load(tmp_path / "sg", binary_embedding="off").cfg.binary_embedding is False
