"""The official RWKV-7 (x070) state-dict format: recognition, config inference, bf16 files, the
layer-0 value-residual keys, round trips and the errors a user can meet."""

from __future__ import annotations

import pytest
import torch
from conftest import make_rwkv6
from rwkv7_helpers import official_rwkv7_state_dict

from spikelm.checkpoints.rwkv7 import (
    from_official,
    infer_rwkv7_config,
    is_rwkv7_state_dict,
    rwkv7_from_state_dict,
    to_official,
)
from spikelm.config import RWKV7Config
from spikelm.runargs import TrainArgs
from spikelm.errors import CheckpointError
from spikelm.models.rwkv7 import RWKV7


def test_recognises_x070_and_nothing_else():
    assert is_rwkv7_state_dict(official_rwkv7_state_dict())
    assert not is_rwkv7_state_dict(make_rwkv6().state_dict())
    assert not is_rwkv7_state_dict({"emb.weight": torch.zeros(3, 4)})
    with pytest.raises(CheckpointError, match="not an RWKV-7"):
        infer_rwkv7_config(make_rwkv6().state_dict())


@pytest.mark.parametrize(
    "L,C,N,V,lora,Fh",
    [(2, 64, 16, 257, (8, 16, 4, 24), None), (3, 128, 64, 65536, (64, 64, 32, 128), 448), (1, 96, 32, 1000, (16, 8, 8, 32), None)],
)
def test_infers_every_size_from_shapes(L, C, N, V, lora, Fh):
    sd = official_rwkv7_state_dict(L, C, N, V, dim_ffn=Fh, lora=lora)
    cfg = infer_rwkv7_config(sd)
    assert (cfg.n_layer, cfg.n_embd, cfg.head_size, cfg.vocab_size, cfg.n_head) == (L, C, N, V, C // N)
    assert (cfg.decay_lora_dim, cfg.a_lora_dim, cfg.v_lora_dim, cfg.gate_lora_dim) == lora
    assert cfg.dim_ffn == (Fh or 4 * C)
    assert cfg.tokenizer == ("bytes" if V == 257 else "world")
    model = RWKV7(cfg)  # the inferred config builds a model the state dict fits exactly
    model.load_state_dict(from_official(sd), strict=True)


def test_one_layer_without_value_lora_uses_the_default_size():
    sd = official_rwkv7_state_dict(1, 64, 16, 257, layer0_value_lora=False)
    assert infer_rwkv7_config(sd).v_lora_dim == RWKV7Config(n_embd=64, head_size=16).v_lora_dim


def test_bf16_file_loads_tensor_by_tensor(tmp_path):
    """An official bf16 .pth, memory-mapped: every parameter equals the bf16 value upcast, and the
    source dict is consumed (no second copy kept alive)."""
    sd = official_rwkv7_state_dict(2, 64, 16, 257, seed=4)
    path = tmp_path / "RWKV-x070-tiny.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, path)
    loaded = torch.load(path, weights_only=True, mmap=True)
    model = rwkv7_from_state_dict(loaded)
    assert not loaded
    params = model.state_dict()
    assert all(p.dtype == torch.float32 for p in params.values())
    for k, p in params.items():
        torch.testing.assert_close(p, sd[k].to(torch.bfloat16).float(), rtol=0, atol=0, msg=k)
    with torch.no_grad():
        logits, _ = model(torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(logits).all()


def test_layer0_value_lora_is_dropped_and_written_back():
    sd = official_rwkv7_state_dict(2, 64, 16, 257)
    keys = set(sd)
    mine = from_official(dict(sd))
    assert {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"} == keys - set(mine)
    model = RWKV7(infer_rwkv7_config(sd))
    model.load_state_dict(mine, strict=True)
    back = to_official(model)
    assert set(back) == keys
    for k in keys - {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}:
        torch.testing.assert_close(back[k], sd[k], rtol=0, atol=0)
    assert back["blocks.0.att.v1"].shape == sd["blocks.0.att.v1"].shape and not back["blocks.0.att.v1"].any()
    assert to_official(model, dtype=torch.bfloat16)["head.weight"].dtype == torch.bfloat16


def test_round_trip_through_official_layout_keeps_logits():
    model = rwkv7_from_state_dict(official_rwkv7_state_dict(3, 64, 16, 257, seed=5))
    again = rwkv7_from_state_dict(to_official(model))
    idx = torch.randint(0, 257, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(again(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_errors_name_the_problem():
    sd = official_rwkv7_state_dict(3, 64, 16, 257)
    with pytest.raises(CheckpointError, match="rwkv. pip package"):
        from_official({**sd, "_strategy": "cpu fp32"})
    with pytest.raises(CheckpointError, match="DeepEmbed"):
        infer_rwkv7_config({**sd, "blocks.0.ffn.s_emb.weight": torch.zeros(1)})
    missing_block = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError, match=r"blocks \[1\] are missing"):
        infer_rwkv7_config(missing_block)
    bad_heads = {**sd, "blocks.0.att.r_k": torch.zeros(3, 16)}
    with pytest.raises(CheckpointError, match="heads x head size"):
        infer_rwkv7_config(bad_heads)
    bad_later = {**sd, "blocks.2.att.w1": torch.zeros(64, 12)}
    with pytest.raises(CheckpointError, match="does not fit"):
        rwkv7_from_state_dict(bad_later)


def test_config_round_trip_and_training_config():
    cfg = RWKV7Config(n_layer=2, n_embd=64, head_size=16, vocab_size=257, tokenizer="bytes")
    assert RWKV7Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="head_size"):
        RWKV7Config(n_embd=64, head_size=24)
    args = TrainArgs(model={"kind": "rwkv7", "n_layer": 2, "n_embd": 64, "head_size": 16})
    assert args.model["kind"] == "rwkv7"
    with pytest.raises(ValueError, match="model: unknown"):
        TrainArgs(model={"kind": "rwkv7", "time_maa_extra_dim": 3})


def test_spikelm_folder_round_trip(tmp_path):
    """save() writes kind rwkv7 into config.json; load() rebuilds it through the registered builder
    (the path the trainer's checkpoints take)."""
    from spikelm.checkpoints import load, save

    model = rwkv7_from_state_dict(official_rwkv7_state_dict(2, 64, 16, 257, seed=6))
    again = load(save(model, tmp_path / "m"))
    assert isinstance(again, RWKV7) and again.cfg == model.cfg
    idx = torch.randint(0, 257, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(again(idx)[0], model(idx)[0], rtol=0, atol=0)
