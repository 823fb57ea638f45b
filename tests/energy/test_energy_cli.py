"""`spikelm energy` end to end on tiny random checkpoints and a small text file; plots."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_rwkv6
from spikelm.cli import main
from spikelm.checkpoints import save, save_official

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog, {i * 7 % 13} times.\n" for i in range(60))


@pytest.fixture
def files(tmp_path):
    pth = save_official(make_rwkv6(n_layer=2, n_embd=32, head_size=16, seed=7), tmp_path / "tiny.pth")
    txt = tmp_path / "text.txt"
    txt.write_text(TEXT, encoding="utf-8")
    return tmp_path, pth, txt


def test_cli_preset_on_the_fly_json_and_plots(files, capsys):
    tmp, pth, txt = files
    prefix = tmp / "plots" / "tiny"
    assert main(["-q", "energy", str(pth), "--data", f"{txt},{txt}", "--preset", "SpikeRWKV-4L", "--calib-data", str(txt),
                 "--whole-file", "--tokens", "200", "--json", "--plot", str(prefix), "--chunk", "64"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "SpikeRWKV-4L" and [d["tokens"] for d in out["datasets"]] == [200, 200]
    paper, full = out["paper"], out["full"]
    assert paper["c_in"] == 32 and paper["e_ann_pj"] == pytest.approx(32 * 4.6)
    cell = paper["tasks"][str(txt)]["SpikeRWKV-4L"]
    assert 0 < cell["fr"] < 1 and (cell["T"], cell["layers"]) == (1, 4)
    assert cell["e_snn_pj"] == pytest.approx(32 * cell["fr"] * 4 * 0.9)
    assert paper["avg"]["SpikeRWKV-4L"]["e_snn_pj"] == pytest.approx(cell["e_snn_pj"])  # the same text twice
    assert full["tokens"] == 400 and full["total"]["e_snn_pj"] == pytest.approx(sum(r["e_snn_pj"] for r in full["rows"]))
    assert 0 < full["total"]["spike_share"] < 1
    assert sorted(out["plots"]) == sorted([f"{prefix}-energy.png", f"{prefix}-firing.png"])
    for p in out["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_converted_folder_text_output_and_custom_energies(files, capsys):
    from spikelm.config import EncodingConfig
    from spikelm.convert import convert
    from spikelm.checkpoints import load

    tmp, pth, txt = files
    m = load(pth)
    g = torch.Generator().manual_seed(0)
    convert(m, EncodingConfig(encoding="rate", T=3, layers=1), [torch.randint(0, 257, (2, 32), generator=g)])
    folder = save(m, tmp / "snn")
    assert main(["-q", "energy", str(folder), "--data", str(txt), "--tokens", "100", "--e-mac", "2.0", "--e-ac", "0.5",
                 "--flag-acs"]) == 0
    text = capsys.readouterr().out
    assert "rate T=3 l=1 E(pJ)" in text and "E_MAC = 2 pJ, E_AC = 0.5 pJ" in text
    assert "Full count: RWKV6, 100 tokens" in text and "flag spikes charged" in text and "blocks.1.att.key" in text


def test_cli_ann_has_no_spiking_column_and_user_errors(files, capsys):
    tmp, pth, txt = files
    assert main(["-q", "energy", str(pth), "--data", str(txt), "--tokens", "50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["paper"]["methods"] == [] and list(out["paper"]["tasks"]) == [str(txt)]
    assert out["full"]["total"]["spike_share"] == 0 and out["full"]["total"]["ee"] == pytest.approx(1.0)
    assert main(["-q", "energy", str(pth), "--data", str(txt), "--table", "3nm"]) == 2
    assert "unknown energy table" in capsys.readouterr().err


def test_tradeoff_plot_and_pareto_front(tmp_path):
    from spikelm.energy.plots import pareto_front, plot_tradeoff

    pts = [("ANN", 10.0, 900.0), ("4L", 10.2, 300.0), ("3L", 11.0, 200.0), ("bad", 12.0, 400.0), ("rate", 13.0, 800.0)]
    assert [p[0] for p in pareto_front(pts)] == ["3L", "4L", "ANN"]
    p = plot_tradeoff(pts, tmp_path / "t.png", log_energy=True)
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_cli_energy_summary_and_stacked_bars(files, capsys):
    tmp, pth, txt = files
    prefix = tmp / "p" / "tiny"
    assert main(["-q", "energy", str(pth), "--data", str(txt), "--preset", "SpikeRWKV-3L", "--calib-data", str(txt),
                 "--whole-file", "--tokens", "64", "--json", "--plot", str(prefix), "--batch", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = out["summary"]
    assert s["batch"] == 4 and s["quantised_bits"] == 4 and s["eq5"]["ee"] > 1
    # like for like by default: 8-bit weights on both sides, the spiking network at the int8 table
    assert out["weight_bits"] == 8 and s["weight_bits"] == 8 and s["table"] == "45nm-int8"
    assert s["snn"]["weight_bits"] == 8 and all(b["weight_bits"] == 8 for b in s["baselines"])
    names = [b["name"] for b in s["baselines"]]
    assert names == ["ANN W8A8 (dense)", "equal-information ANN W8A4 (dense)", "equal-information ANN W8A4 (zero-skipping)"]
    dense, equal, zero = s["baselines"]
    assert zero["compute"] < equal["compute"] < dense["compute"] and zero["sram"] < equal["sram"]
    assert all(b["break_even"]["overall"]["compute"] is not None for b in s["baselines"])
    assert len(dense["break_even"]["rows"]) == 2 * 4  # receptance, key, value, gate of two blocks
    # one spiking total: the full count's is the summary's compute (same table, flags alike)
    assert out["full"]["total"]["e_snn_pj"] == pytest.approx(s["snn"]["compute"])
    assert s["paper_convention"]["table"] == "45nm-fp32" and out["paper"]["table"] == "45nm-fp32"
    assert s["snn"]["compute"] < s["snn"]["sram"] < s["snn"]["dram"]
    assert open(out["parts_plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["-q", "energy", str(pth), "--data", str(txt), "--whole-file", "--tokens", "32"]) == 0
    text = capsys.readouterr().out
    assert "EE compute" in text and "equal-information" not in text  # an ANN has no spike code to match
    assert text.index("## Like for like") < text.index("## Full count") < text.index("## The paper's convention")
    assert main(["-q", "energy", str(pth), "--data", str(txt), "--whole-file", "--tokens", "32", "--weight-bits", "32",
                 "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert s["table"] == "45nm-fp32" and [b["name"] for b in s["baselines"]] == ["ANN W32A32 (dense)"]


def test_cli_sweep_with_energy_at_both_site_sets(files, capsys):
    tmp, pth, txt = files
    assert main(["-q", "sweep", str(pth), "--data", str(txt), "--whole-file", "--presets", "SpikeRWKV-3L",
                 "--calib-data", str(txt), "--sites", "both", "--energy", "--energy-tokens", "32", "--max-chars", "400",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["RWKV (ANN)", "SpikeRWKV-3L (time_mix)", "SpikeRWKV-3L (all)"]
    assert rows[0]["ee_dense_compute"] == pytest.approx(1.0) and rows[0]["ee_equal_compute"] is None
    assert all(r["weight_bits"] == 8 and r["table"] == "45nm-int8" for r in rows)  # --energy: like for like
    assert all(r["break_even_dense_compute"] is not None for r in rows[1:])
    # encoding the feed-forward too (all) drives more MACs by spikes than the time mixing alone
    assert rows[2]["e_compute_pj"] < rows[1]["e_compute_pj"] < rows[0]["e_compute_pj"]
    assert all(r["quantised_bits"] == 4 for r in rows[1:])
    # --table names the spiking network's table (the baselines keep the weights' precision)
    assert main(["-q", "sweep", str(pth), "--data", str(txt), "--whole-file", "--presets", "SpikeRWKV-3L",
                 "--calib-data", str(txt), "--energy", "--energy-tokens", "16", "--max-chars", "200", "--table", "45nm-fp16",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["table"] for r in rows} == {"45nm-fp16"} and {r["weight_bits"] for r in rows} == {8}
