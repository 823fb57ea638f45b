"""SpikeGPT release loading against the public SpikeGPT inference code (the oracle).

The fixtures in tests/models/data/spikegpt_oracle_*.pt hold random release-layout checkpoints and
the logits that ridgerchu/SpikeGPT's ``src/model_run.py`` computes on them, token by token, on the
CPU in fp32; ``tests/models/oracle/make_spikegpt_fixture.py`` writes them (see its docstring). Here
spikelm loads the same weights through its release loader and must give the same logits, in one
parallel call and token by token with the state carried. Both cases have 8 blocks, so the run
code's layer rescaling (every 6 blocks) is exercised; the 77-token case takes the binary-embedding
branch of the run code, the 100-token case the real-valued one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spikelm.checkpoints.spikegpt import (
    infer_spikegpt_config,
    load_spikegpt,
    spikegpt_from_state_dict,
)
from spikelm.errors import CheckpointError
from spikelm.models.spikegpt import SpikeGPT, SpikeGPTConfig

DATA = Path(__file__).parent / "data"
CASES = ["spikegpt_oracle_v77", "spikegpt_oracle_v100"]
# The run code and spikelm do the same fp32 arithmetic in a different order (matrix-vector vs
# batched matmul, WKV loop vs parallel form): logits agree to float rounding, ~1e-6 of their
# range. A LIF membrane within rounding of the threshold would flip a spike and break this; the
# fixture's membranes are not (its weights are fixed), so any larger error is a real difference.
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _fixture(name: str) -> dict:
    return torch.load(DATA / f"{name}.pt", map_location="cpu", weights_only=True)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("name", CASES)
def test_release_loader_reproduces_the_public_run_code(tmp_path, name):
    fx = _fixture(name)
    meta, ref, tokens = fx["meta"], fx["logits"], fx["tokens"]
    V = meta["vocab_size"]
    path = tmp_path / "release.pth"
    torch.save(fx["state_dict"], path)
    model = load_spikegpt(path)  # defaults: the run code's rules
    assert model.cfg.binary_embedding == (V == 77) == meta["binary_embedding"]
    assert model.cfg.rescale_every == meta["rescale_layer"] == 6
    with torch.no_grad():
        parallel, _ = model(tokens[None])  # (1, T, V)
        state, rows = None, []
        for t in tokens.tolist():
            lo, state = model(torch.tensor([[t]]), state)
            rows.append(lo[0, 0])
    recurrent = torch.stack(rows)
    err_par, err_rec = _rel_err(parallel[0], ref), _rel_err(recurrent, ref)
    print(f"{name}: max |logit error| / max |logit|: parallel {err_par:.2e}, token by token {err_rec:.2e}")
    assert err_par <= RTOL and err_rec <= RTOL


@pytest.mark.parametrize("name", CASES)
def test_the_fixture_tells_the_rules_apart(name):
    """Flip either setting and the output moves far from the run code's: the fixtures do test them."""
    fx = _fixture(name)
    V, ref, tokens = fx["meta"]["vocab_size"], fx["logits"], fx["tokens"]
    flipped = "off" if V == 77 else "on"
    with torch.no_grad():
        for kw in ({"binary_embedding": flipped}, {"rescale_every": 0}):
            logits, _ = spikegpt_from_state_dict(fx["state_dict"], **kw)(tokens[None])
            assert _rel_err(logits[0], ref) > 1e-2, kw


def _release_keys(V: int, C: int = 8) -> dict[str, torch.Tensor]:
    return {"emb.weight": torch.empty(V, C), "blocks.0.att.time_first": torch.empty(C),
            "blocks.0.att.time_mix_k": torch.empty(1, 1, C), "blocks.0.ffn.key.weight": torch.empty(4 * C, C)}


def test_binary_embedding_rule_and_overrides():
    assert infer_spikegpt_config(_release_keys(77)).binary_embedding is True  # enwik8 characters
    assert infer_spikegpt_config(_release_keys(50277)).binary_embedding is False  # the released 216M
    assert infer_spikegpt_config(_release_keys(257)).binary_embedding is False
    assert infer_spikegpt_config(_release_keys(50277), binary_embedding="on").binary_embedding is True
    assert infer_spikegpt_config(_release_keys(77), binary_embedding="off").binary_embedding is False
    assert infer_spikegpt_config(_release_keys(77), binary_embedding=False).binary_embedding is False
    assert infer_spikegpt_config(_release_keys(77), rescale_every=0).rescale_every == 0
    with pytest.raises(CheckpointError, match="binary_embedding"):
        infer_spikegpt_config(_release_keys(77), binary_embedding="sometimes")


def test_spikelm_trained_checkpoints_keep_their_setting(tmp_path):
    """The run code's rule is for release files only: a spikelm folder keeps what it recorded."""
    from spikelm import checkpoints as checkpoint

    model = SpikeGPT(SpikeGPTConfig(vocab_size=100, n_layer=1, n_embd=8))  # default: binary, no rescaling
    assert model.cfg.binary_embedding is True and model.cfg.rescale_every == 0
    checkpoint.save(model, tmp_path / "sg")
    saved = json.loads((tmp_path / "sg" / "config.json").read_text())
    assert saved["binary_embedding"] is True and saved["rescale_every"] == 0
    loaded = checkpoint.load(tmp_path / "sg")
    assert loaded.cfg.binary_embedding is True and loaded.cfg.rescale_every == 0


def test_info_shows_the_release_settings(tmp_path, capsys):
    from spikelm.cli.models import cmd_info as cli_info

    torch.save(_fixture("spikegpt_oracle_v100")["state_dict"], tmp_path / "release.pth")
    assert cli_info(str(tmp_path / "release.pth"), json_=True) == 0
    cfg = json.loads(capsys.readouterr().out)["config"]
    assert cfg["binary_embedding"] is False and cfg["rescale_every"] == 6
