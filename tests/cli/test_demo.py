"""`spikelm demo --tiny` end to end: every section of results.json present, with finite numbers."""

from __future__ import annotations

import json
import math

from spikelm.cli import main


def _finite_numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _finite_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        yield path, obj


def test_demo_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--tiny", "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    for section in ("settings", "machine", "corpus", "training", "table1", "table2", "table3", "energy_full", "samples", "plots", "timings"):
        assert section in res, section
    models = [r["model"] for r in res["table1"]["rows"]]
    nlu = ["RWKV (ANN)", "SNN-RWKV-3", "SNN-RWKV-4", "SpikeRWKV-3L", "SpikeRWKV-4L", "SpikeRWKV-5L", "spikelm-4L"]
    tuned = ["SpikeRWKV-4L (all)", "SpikeRWKV-4L (all) +FT", "SpikeRWKV-3L (all)", "SpikeRWKV-3L (all) +FT"]
    assert models == nlu + tuned + ["SpikeGPT", "RWKV (ANN), fp32 weights"]  # like for like: 8-bit weights, and the float ANN
    assert res["table1"]["weight_bits"] == 8 and {r["weight_bits"] for r in res["table1"]["rows"]} == {8, 32}
    for r in res["table1"]["rows"]:
        assert math.isfinite(r["ppl"]) and math.isfinite(r["bpc"])
    assert set(res["table2"]) == set(nlu + ["SpikeGPT"]) and all(len(v) == 7 for v in res["table2"].values())
    assert set(res["table3"]) == set(models[:-1])
    assert all(e["weight_bits"] == 8 and e["table"] == "45nm-int8" for e in res["energy_summary"].values())
    assert set(res["finetuning"]) == {"SpikeRWKV-4L", "SpikeRWKV-3L"} and res["finetuning"]["SpikeRWKV-4L"]["steps"] == 3
    for name, e in res["table3"].items():
        assert e["pj_per_token"] > 0 and math.isfinite(e["pj_per_token"]), name
    bad = [(p, v) for p, v in _finite_numbers({k: res[k] for k in ("table1", "table3", "training")}) if not math.isfinite(v)]
    # LAMBADA perplexity of an untrained model may overflow; tables 1 and 3 and training may not
    assert not bad, bad[:5]
    report = (out / "report.md").read_text()
    for heading in ("## Table 1", "## Table 2", "## Table 3", "## Samples", "## Training"):
        assert heading in report
    assert "**Headline (SpikeRWKV-4L).** Like for like (8-bit weights on both sides, memory in SRAM)" in report
    assert "The paper's convention" in report
    for png in ("tradeoff.png", "firing_rates.png", "training_curves.png"):
        assert (out / png).stat().st_size > 1000
    # a rerun reuses every cached stage and trains nothing
    capsys.readouterr()
    assert main(["-q", "demo", "--out", str(out), "--tiny", "--no-progress"]) == 0
    res2 = json.loads((out / "results.json").read_text())
    assert res2["table1"] == res["table1"] and res2["training"] == res["training"]
    assert not list(out.rglob("*.tmp-*"))
