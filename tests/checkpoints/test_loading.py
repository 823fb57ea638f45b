"""Loading: official, HF-layout and spikelm folders round-trip; bad inputs fail with their message."""

from __future__ import annotations

import json

import pytest
import torch

import spikelm
from conftest import make_rwkv6
from spikelm.checkpoints import load, save, save_official
from spikelm.checkpoints.rwkv6 import HF_KEY_MAP
from spikelm.errors import CheckpointError
from spikelm.cli import main


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def _to_hf(sd):
    out = {}
    for k, v in sd.items():
        k2 = k
        if k.startswith("emb."):
            k2 = "rwkv.embeddings." + k[4:]
        elif k.startswith("ln_out."):
            k2 = "rwkv." + k
        elif k.startswith("blocks."):
            k2 = "rwkv." + k.replace(".ln0.", ".pre_ln.").replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
        out[k2] = v
    return out


def test_official_pth_roundtrip(tmp_path):
    m = make_rwkv6(n_layer=2, n_embd=64, head_size=16)
    p = save_official(m, tmp_path / "x.pth")
    _same(m, spikelm.load(p))


def test_bf16_official_upcasts(tmp_path):
    m = make_rwkv6()
    p = save_official(m, tmp_path / "bf.pth", dtype=torch.bfloat16)
    loaded = spikelm.load(p)
    assert loaded.emb.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.emb.weight, m.emb.weight.bfloat16().float())


def test_safetensors_official(tmp_path):
    from safetensors.torch import save_file

    m = make_rwkv6()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "m.safetensors"))
    _same(m, spikelm.load(tmp_path / "m.safetensors"))


def test_hf_layout(tmp_path):
    from safetensors.torch import save_file

    m = make_rwkv6()
    d = tmp_path / "hf"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in _to_hf(m.state_dict()).items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "rwkv6"}))
    _same(m, spikelm.load(d))
    assert len(HF_KEY_MAP) >= 6


def test_spikelm_folder_roundtrip(tmp_path):
    m = make_rwkv6()
    out = save(m, tmp_path / "ckpt")
    assert (out / "model.safetensors").exists() and json.loads((out / "config.json").read_text())["kind"] == "rwkv6"
    loaded = spikelm.load(out)
    _same(m, loaded)
    assert loaded.cfg == m.cfg
    # saving again over an existing folder replaces it atomically
    save(m, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize(
    "make_bad,message",
    [
        (lambda p, sd: p.write_bytes(b""), "empty"),
        (lambda p, sd: p.write_bytes(b"not a checkpoint at all" * 10), "cannot read"),
        (lambda p, sd: (torch.save(sd, p), p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])), "cannot read"),
        (lambda p, sd: torch.save({**sd, "_strategy": "cuda fp16", "_version": "0.7"}, p), "converted by the `rwkv` pip package"),
        (lambda p, sd: torch.save({k.replace("time_maa_x", "time_mix_k"): v for k, v in sd.items() if "time_maa" not in k and "ln_x" not in k and "time_faaaa" not in k} | {"blocks.0.att.time_first": torch.zeros(4)}, p), "RWKV-4"),
        (lambda p, sd: torch.save({k: v for k, v in sd.items() if "time_maa" not in k}, p), "RWKV-5"),
        (lambda p, sd: torch.save({"emb.weight": sd["emb.weight"], "blocks.0.att.w0": torch.zeros(3)}, p), "RWKV-7"),
        (lambda p, sd: torch.save({**sd, "blocks.0.att.key.weight": torch.zeros(3, 3)}, p), "blocks.0.att.key.weight has shape"),
        (lambda p, sd: torch.save({k: v for k, v in sd.items() if k != "head.weight"}, p), "missing"),
        (lambda p, sd: torch.save({"model": torch.nn.Linear(2, 2)}, p), "pickled"),
    ],
)
def test_bad_inputs(tmp_path, make_bad, message):
    sd = make_rwkv6().state_dict()
    p = tmp_path / "bad.pth"
    make_bad(p, sd)
    with pytest.raises(CheckpointError) as e:
        load(p)
    assert message in str(e.value) and "bad.pth" in str(e.value)


def test_missing_file_message():
    with pytest.raises(CheckpointError, match="no such file"):
        load("/nonexistent/model.pth")


def test_cli_info_and_error(tmp_path, capsys):
    m = make_rwkv6()
    p = save_official(m, tmp_path / "m.pth")
    assert main(["info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["n_layer"] == 2 and info["parameters"] == sum(v.numel() for v in m.state_dict().values())
    (tmp_path / "broken.pth").write_bytes(b"xx")
    assert main(["info", str(tmp_path / "broken.pth")]) == 2
    err = capsys.readouterr().err
    assert "broken.pth" in err and "Traceback" not in err


def test_cli_init_and_generate(tmp_path, capsys):
    out = tmp_path / "rand"
    assert main(["init", str(out), "--n-layer", "1", "--n-embd", "64", "--head-size", "16"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "Hi", "--max-tokens", "8", "--json", "--temperature", "0"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prompt"] == "Hi" and len(res["tokens"]) <= 8
