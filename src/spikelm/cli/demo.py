"""The main job at small scale: what `make demo` runs.

On the embedded corpus (Brown, byte level) it trains a small RWKV-6 (the ANN) and a SpikeGPT of
similar size on the same token budget, converts the ANN with every paper preset and spikelm's own
setting, converts it with SpikeRWKV-4L and -3L at every site and fine-tunes those two
(``spikelm finetune``), and measures all of them the same way: PPL / BPC on the held-out test split (SpikeRWKV
Table 1), few-shot multiple-choice accuracy on the offline benchmark data (Table 2), energy by the
paper's formula and by a full count (Table 3), firing rates, and a text sample from each kind of
model. Every model is measured with its weights stored at ``--weight-bits`` (8 by default: int8,
a scale per output channel; each conversion calibrated on the quantised ANN, a fine-tuned one
quantised after fine-tuning), so Table 3 prices the very networks Tables 1 and 2 score, like for
like (the spiking network and its ANN twins at the same weight precision, memory in SRAM), then
keeps the paper's convention (fp32); Table 1 adds the float ANN as a reference row. It writes
``report.md``, ``results.json`` and PNG plots into ``--out``.

Every stage's result is cached under ``<out>/cache`` with a key made of its settings, so a rerun
reuses what is done (``--fresh`` starts over). Each file is written to a temporary name and
renamed, so Ctrl-C never leaves a half-written file that the next run trusts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoints import load
from ..runargs import TrainArgs
from ..errors import ConfigError
from ..convert import convert, preset_config
from ..data.build import prepare
from ..data.text import calibration_batches, split_tokens
from ..energy.constants import PAPER_TABLE
from ..energy.plots import _figure, _save, plot_energy_parts, plot_tradeoff
from ..energy.report import count_model, full_report, paper_entry
from ..energy.summary import energy_summary, headline
from ..energy.tradeoff import energy_columns
from ..evaluate.multiple_choice import evaluate_tasks, format_table2
from ..evaluate.perplexity import evaluate_lm
from ..evaluate.sweep import format_table1
from ..generate import generate
from ..io import atomic_write_json, atomic_write_text, claim_dir
from ..models.quantized import quantize_weights
from ..progress import ProgressFn
from ..train import FinetuneArgs, finetune, train
from .options import WeightBits, progress_bars, resolve_weight_bits

log = logging.getLogger(__name__)

__all__ = ["DemoSettings", "run_demo", "cmd_demo", "machine_info"]

PAPER_PRESETS = ["SNN-RWKV-3", "SNN-RWKV-4", "SpikeRWKV-3L", "SpikeRWKV-4L", "SpikeRWKV-5L"]
OWN_PRESET = "spikelm-4L"
FINETUNED = ["SpikeRWKV-4L", "SpikeRWKV-3L"]  # converted at every site, then fine-tuned (Tables 1 and 3)
FLOAT_ANN = "RWKV (ANN), fp32 weights"  # Table 1's reference row where the models store fewer bits
NLU_TASKS = ["arc_easy", "arc_challenge", "piqa", "copa", "winogrande", "hellaswag", "lambada"]


@dataclass
class DemoSettings:
    """Sizes of the demo; ``minutes`` is the training budget of both models together."""

    minutes: float = 7.5
    n_layer: int = 4
    n_embd: int = 128
    head_size: int = 32
    ctx_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3  # 3e-3 diverged (NaN gradient at step 184) for the 4x128 RWKV-6
    max_steps: int = 100000  # the time budget ends training first
    eval_chars: int = 60000  # characters of the test split scored for Table 1
    nlu_limit: int = 20
    nlu_shots: int = 2
    nlu_tasks: list[str] = field(default_factory=lambda: list(NLU_TASKS))
    energy_tokens: int = 2048
    sample_tokens: int = 160
    prompt: str = "The jury said"
    seed: int = 0
    finetune_steps: int = 40  # of batch_size x ctx_len tokens each
    finetune_lr: float = 3e-4
    finetune_scale_lr: float = 0.1
    weight_bits: int = 8  # every model's weights (like for like); 32: float, as trained

    def key(self, *fields_: str) -> str:
        d = asdict(self)
        blob = json.dumps({k: d[k] for k in fields_} if fields_ else d, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, default=_jsonable)


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _cached(cache: Path, name: str, key: str, compute: Callable[[], Any]) -> Any:
    """Load ``<cache>/<name>-<key>.json`` if it exists, else compute it and write it atomically."""
    path = cache / f"{name}-{key}.json"
    if path.exists():
        log.info("demo: reusing %s", path.name)
        return json.loads(path.read_text())
    out = compute()
    _atomic_json(path, out)
    return out


# ------------------------------------------------------------------------------------ stages
def _train(kind: str, s: DemoSettings, out: Path, minutes: float, progress: ProgressFn | None) -> dict[str, Any]:
    """Train one model (cached by settings): returns its path and training history."""

    if kind == "rwkv6":
        model_cfg = {"kind": "rwkv6", "n_layer": s.n_layer, "n_embd": s.n_embd, "head_size": s.head_size}
    else:
        model_cfg = {"kind": "spikegpt", "n_layer": s.n_layer, "n_embd": s.n_embd, "ctx_len": s.ctx_len}
    key = s.key("n_layer", "n_embd", "head_size", "ctx_len", "batch_size", "lr", "max_steps", "seed") + f"-{minutes:g}m"
    run_dir = out / "models" / f"{kind}-{key}"
    earlier = _finished(run_dir, f"trained {kind}")
    if earlier is not None:
        return earlier
    args = TrainArgs(
        model=model_cfg, data="default", tokenizer="bytes", ctx_len=s.ctx_len, batch_size=s.batch_size,
        max_steps=s.max_steps, max_minutes=minutes, lr=s.lr, min_lr=s.lr / 10, warmup_steps=50,
        eval_every=100, eval_batches=8, save_every=0, log_every=20, out_dir=str(run_dir), seed=s.seed,
        device="auto", precision="auto",
    )
    t0 = time.perf_counter()
    res = train(args, progress=progress)
    result = {
        "kind": kind, "path": str(res.final_path), "val_loss": res.val_loss, "val_bits": res.val_bits,
        "steps": res.steps, "tokens": res.tokens, "seconds": time.perf_counter() - t0,
        "tokens_per_second": res.tokens / max(1e-9, res.elapsed_s), "stopped_by": res.stopped_by,
        "params": sum(p.numel() for p in _load(res.final_path).parameters()),
        "history": [{k: h.get(k) for k in ("step", "tokens", "loss", "val_loss", "elapsed_s")} for h in res.history],
    }
    _atomic_json(run_dir / "result.json", result)
    return result


def _finished(run_dir: Path, what: str) -> dict[str, Any] | None:
    """A finished run's result.json (with its final model), or None; an unfinished run is deleted."""
    done = run_dir / "result.json"
    if done.exists() and (run_dir / "final" / "config.json").exists():
        log.info("demo: reusing %s in %s", what, run_dir)
        return json.loads(done.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: never trusted
    return None


def _finetune(preset: str, s: DemoSettings, out: Path, ann_path: str, progress: ProgressFn | None) -> dict[str, Any]:
    """Fine-tune the ANN's all-sites conversion with ``preset`` (cached by settings): path and cost."""
    key = s.key("finetune_steps", "finetune_lr", "finetune_scale_lr", "ctx_len", "batch_size", "seed")
    run_dir = out / "models" / f"ft-{preset}-all-{Path(ann_path).parent.name}-{key}"
    earlier = _finished(run_dir, f"fine-tuned {preset}")
    if earlier is not None:
        return earlier
    args = FinetuneArgs(checkpoint=ann_path, preset=preset, sites="all", data="default", calib_data="default",
                        calib_batches=8, calib_ctx=s.ctx_len, ctx_len=s.ctx_len, batch_size=s.batch_size,
                        max_steps=s.finetune_steps, lr=s.finetune_lr, min_lr=s.finetune_lr / 10,
                        scale_lr=s.finetune_scale_lr, warmup_steps=max(1, s.finetune_steps // 10), eval_every=0,
                        eval_batches=4, save_every=0, out_dir=str(run_dir), seed=s.seed)
    res = finetune(args, progress=progress)
    summary = json.loads((run_dir / "summary.json").read_text())
    result = {"preset": preset, "path": str(res.final_path), "steps": res.steps, "tokens": res.tokens,
              "seconds": res.elapsed_s, "val_gap_before_pct": summary.get("converted_gap_pct"),
              "val_gap_pct": summary.get("val_gap_pct")}
    _atomic_json(run_dir / "result.json", result)
    return result


def _load(path: str | Path):
    return load(path)


def _test_text(s: DemoSettings):

    t = split_tokens("default", "test", "bytes", max_chars=s.eval_chars)
    return t.tokens, t.unit, t.n_units, t.description


def _calibration(model) -> list:
    return calibration_batches("default", model.tokenizer_name, n_batches=8, batch_size=4, ctx_len=128)


def _convert(ann, preset: str, calib, sites: str = "time_mix"):
    return convert(copy.deepcopy(ann), preset_config(preset, sites), calib)


def _quantized(model, bits: int):
    """``model`` with its weights stored at ``bits`` (in place; as it is at 32)."""
    return model if bits == 32 else quantize_weights(model, bits)


def _energy(model, tokens, method: str) -> dict[str, Any]:
    counts = count_model(model, tokens)
    summary = energy_summary(model, counts)  # like for like at the model's weight precision (docs/energy.md)
    rep = full_report(counts, summary.table)  # the summary's spiking compute is this total
    paper = full_report(counts, PAPER_TABLE)  # the paper's convention: every operation at fp32
    entry = paper_entry(counts, "Brown test", method)
    return {
        "summary": summary.to_dict(),
        "every_energy": energy_columns(summary),
        "headline": headline(summary),
        "full": rep.to_dict(),
        "pj_per_token": rep.total_snn,
        "pj_per_token_ann": rep.total_ann,
        "spike_share": rep.spike_share,
        "fp32_pj_per_token": paper.total_snn,
        "fp32_pj_per_token_ann": paper.total_ann,
        "fp32_spike_share": paper.spike_share,
        "paper": None if entry is None else {"fr": entry.fr, "T": entry.T, "l": entry.layers},
        "markdown": rep.to_markdown(rows=False),
    }


# Everything the demo writes in its output folder (spikelm.io.claim_dir refuses a folder holding anything else).
DEMO_FILES = ("cache/", "models/", "results.json", "report.md", "tradeoff.png", "tradeoff_sram.png", "firing_rates.png",
              "training_curves.png", "energy_parts_*.png")  # one stacked-bar plot per model


def _claim_demo_dir(out: Path, overwrite: bool = False) -> Path:
    """A rerun reuses the demo's own folder (its record says the demo wrote it); a folder holding
    anything else is the user's and is refused; spikelm-named files without the record need --overwrite."""
    return claim_dir(out, overwrite=overwrite, what="--out", owns=DEMO_FILES, reuse="demo")


def run_demo(out: str | Path = "runs/demo", settings: DemoSettings | None = None, fresh: bool = False,
             progress: ProgressFn | None = None, echo: Callable[[str], None] = lambda m: None,
             overwrite: bool = False) -> dict[str, Any]:
    """Run every stage (reusing cached ones) and write the report; returns results.json's content."""

    s = settings or DemoSettings()
    if not s.minutes > 0:
        raise ConfigError(f"--minutes must be > 0 (the training budget of both models), got {s.minutes}")
    out = _claim_demo_dir(Path(out), overwrite)
    if fresh:  # only what the demo itself wrote: its cache and trained models
        for sub in ("cache", "models"):
            shutil.rmtree(out / sub, ignore_errors=True)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name: str):
        echo(f"[demo] {name}")
        return time.perf_counter()

    t = stage("preparing the embedded corpus (Brown, byte level)")
    corpus = prepare("default", "bytes")
    corpus_info = {"name": corpus.name, "train_chars": corpus.n_chars("train"), "test_chars": corpus.n_chars("test"),
                   "unigram_bits_per_byte": corpus.meta.get("unigram_entropy_bits_per_token")}
    timings["corpus"] = time.perf_counter() - t

    t = stage(f"training the RWKV-6 ANN ({s.minutes / 2:g} min budget)")
    ann_run = _train("rwkv6", s, out, s.minutes / 2, progress)
    timings["train_rwkv6"] = time.perf_counter() - t
    t = stage(f"training SpikeGPT ({s.minutes / 2:g} min budget)")
    sg_run = _train("spikegpt", s, out, s.minutes / 2, progress)
    timings["train_spikegpt"] = time.perf_counter() - t
    ft_runs = {}
    for p in FINETUNED:
        t = stage(f"fine-tuning {p} at every site ({s.finetune_steps} steps)")
        ft_runs[p] = _finetune(p, s, out, ann_run["path"], progress)
        timings[f"finetune_{p}"] = time.perf_counter() - t

    torch.manual_seed(s.seed)
    wb = s.weight_bits
    ann_float = _load(ann_run["path"])
    ann = _quantized(copy.deepcopy(ann_float), wb)  # every model below stores its weights at wb bits
    spikegpt = _quantized(_load(sg_run["path"]), wb)
    calib = _calibration(ann)
    presets = PAPER_PRESETS + [OWN_PRESET]
    models: dict[str, Callable[[], Any]] = {"RWKV (ANN)": lambda: ann}
    for p in presets:
        models[p] = (lambda p=p: _convert(ann, p, calib))
    nlu_models = list(models) + ["SpikeGPT"]  # Table 2 (the all-sites rows are in Tables 1 and 3)
    for p in FINETUNED:
        models[f"{p} (all)"] = (lambda p=p: _convert(ann, p, calib, "all"))
        models[f"{p} (all) +FT"] = (lambda p=p: _quantized(_load(ft_runs[p]["path"]), wb))  # fine-tuned in float
    built: dict[str, Any] = {}

    def get(name: str):
        if name == "SpikeGPT":
            return spikegpt
        if name not in built:
            built[name] = models[name]()
        return built[name]

    ann_key = (Path(ann_run["path"]).parent.name + "-ft" + s.key("finetune_steps", "finetune_lr", "finetune_scale_lr")
               + f"-w{wb}")
    sg_key = Path(sg_run["path"]).parent.name

    # Table 1: PPL / BPC on the held-out test split
    t = stage("Table 1: perplexity and bits per byte on the test split")
    tokens, unit, n_units, desc = _test_text(s)

    def table1():
        rows = []
        ann_res = None
        for name in list(models) + ["SpikeGPT"]:
            r = evaluate_lm(get(name), tokens, n_units, chunk=1024, progress=False)
            ann_res = ann_res or r
            enc = getattr(get(name), "encoding", None)
            rows.append({"model": name, "encoding": enc.encoding if enc else "none", "T": enc.T if enc else None,
                         "l": enc.layers if enc else None, **r, "weight_bits": wb,
                         "ppl_gap_pct": 100 * (r["ppl"] / ann_res["ppl"] - 1), "bpc_gap_pct": 100 * (r["bpc"] / ann_res["bpc"] - 1)})
        if wb != 32:  # the float ANN, for the cost of storing the weights at wb bits
            r = evaluate_lm(ann_float, tokens, n_units, chunk=1024, progress=False)
            rows.append({"model": FLOAT_ANN, "encoding": "none", "T": None, "l": None, **r, "weight_bits": 32,
                         "ppl_gap_pct": 100 * (r["ppl"] / ann_res["ppl"] - 1), "bpc_gap_pct": 100 * (r["bpc"] / ann_res["bpc"] - 1)})
        return {"data": desc, "unit": unit, "weight_bits": wb, "rows": rows}

    t1 = _cached(cache, "table1", f"{ann_key}-{sg_key}-{s.key('eval_chars')}", table1)
    timings["table1"] = time.perf_counter() - t

    # Table 3 + firing rates: energy per token on test tokens
    t = stage("Table 3: energy per token and firing rates")

    def energy():
        e_tokens = list(tokens[: s.energy_tokens])
        return {name: _energy(get(name), e_tokens, name) for name in list(models) + ["SpikeGPT"]}

    en = _cached(cache, "energy", f"{ann_key}-{sg_key}-{s.key('energy_tokens', 'eval_chars')}-summary2", energy)
    timings["energy"] = time.perf_counter() - t

    # Table 2: few-shot multiple choice
    t = stage(f"Table 2: {s.nlu_shots}-shot multiple choice, {s.nlu_limit} items per task")

    def table2():
        rows = {}
        for name in nlu_models:
            rows[name] = evaluate_tasks(get(name), s.nlu_tasks, shots=s.nlu_shots, limit=s.nlu_limit, seed=1234,
                                        batch_size=16, progress=False)
        return rows

    t2 = _cached(cache, "table2", f"{Path(ann_run['path']).parent.name}-w{wb}-{sg_key}-{s.key('nlu_limit', 'nlu_shots', 'nlu_tasks')}",
                 table2)
    timings["table2"] = time.perf_counter() - t

    # Samples
    t = stage("text samples")

    def samples():
        out_s = {}
        for name in ("RWKV (ANN)", "SpikeRWKV-4L", "SpikeGPT"):
            g = generate(get(name), s.prompt, max_tokens=s.sample_tokens, temperature=0.8, top_p=0.9, seed=s.seed)
            out_s[name] = {"prompt": s.prompt, "text": g.text, "tokens_per_second": g.tokens_per_second}
        return out_s

    smp = _cached(cache, "samples", f"{ann_key}-{sg_key}-{s.key('prompt', 'sample_tokens', 'seed')}", samples)
    timings["samples"] = time.perf_counter() - t

    # Plots
    t = stage("plots")
    plots = _plots(out, t1, en, ann_run, sg_run)
    timings["plots"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    results = {
        "settings": asdict(s), "machine": machine_info(), "corpus": corpus_info,
        "training": {"rwkv6": ann_run, "spikegpt": sg_run}, "finetuning": ft_runs,
        "table1": t1, "table2": t2,
        "table3": {name: {k: v for k, v in e.items() if k not in ("markdown", "full", "summary")} for name, e in en.items()},
        "energy_summary": {name: e["summary"] for name, e in en.items()},
        "energy_full": {name: e["full"] for name, e in en.items()},
        "samples": smp, "plots": plots, "timings": timings,
    }
    _atomic_json(out / "results.json", results)
    report = _report(results, en, format_table1)
    atomic_write_text(out / "report.md", report)
    return results


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on: CPU model, CPU count, torch version and threads, GPU."""

    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's lines
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cpu = model or platform.processor() or platform.machine()
    # the vector instructions decide which kernels run (one model name can cover CPUs with and without them)
    isa = next((name for flag, name in (("amx_bf16", "AMX and AVX-512 with bf16"), ("avx512_bf16", "AVX-512 with bf16"),
                                         ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    if isa:
        cpu = f"{cpu} ({isa})"
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _plots(out: Path, t1: dict, en: dict, ann_run: dict, sg_run: dict) -> dict[str, str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("demo: matplotlib is not installed; no plots (pip install 'spikelm[plot]')")
        return {}
    paths = {}
    wb = t1.get("weight_bits", 32)
    table = next(iter(en.values()))["summary"]["table"]
    points = [(r["model"], r["ppl"], en[r["model"]]["pj_per_token"]) for r in t1["rows"] if r["model"] in en]
    paths["tradeoff"] = str(plot_tradeoff(points, out / "tradeoff.png", log_energy=True,
                                          title=f"Perplexity vs energy per token, like for like: {wb}-bit weights\n"
                                                f"(test split; spiking networks at {table}, compute only)"))
    points = [(r["model"], r["ppl"], en[r["model"]]["summary"]["snn"]["sram"]) for r in t1["rows"] if r["model"] in en]
    paths["tradeoff_sram"] = str(plot_tradeoff(points, out / "tradeoff_sram.png", log_energy=True,
                                               title=f"Perplexity vs energy per token, like for like: {wb}-bit weights\n"
                                                     f"(test split; spiking networks at {table}, compute + SRAM)"))
    for name, e in en.items():
        slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
        paths[f"parts:{name}"] = str(plot_energy_parts(e["summary"], out / f"energy_parts_{slug}.png",
                                                       f"Energy per token: {name}"))

    fig, ax = _figure(8, 4.5)
    series: dict[str, dict[str, list[float]]] = {}
    for name in ("SpikeRWKV-4L", "SNN-RWKV-4", "SpikeGPT"):
        for site in en.get(name, {}).get("full", {}).get("sites", []):
            parts = site["name"].split(".")
            layer = ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]
            series.setdefault(name, {}).setdefault(layer, []).append(site["firing_rate"])
    # one shared x axis: what comes before the blocks (the embedding), the blocks in order, the rest
    order = lambda k: (0, 0) if not k.startswith("blocks.") else (1, int(k.split(".")[1]))  # noqa: E731
    cats = sorted({k for layers in series.values() for k in layers}, key=lambda k: (order(k), k))
    for name, layers in series.items():
        xs = [cats.index(k) for k in layers]
        pts = sorted(zip(xs, [sum(v) / len(v) for v in layers.values()]))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    ax.set_xticks(range(len(cats)), cats, rotation=30, fontsize="small")
    ax.set_ylabel("mean firing rate (spikes / neuron / step)")
    ax.set_title("Firing rate per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    paths["firing_rates"] = str(_save(fig, out / "firing_rates.png"))

    fig, ax = _figure(7, 4.5)
    for run, label in ((ann_run, "RWKV-6 (ANN)"), (sg_run, "SpikeGPT")):
        h = [r for r in run["history"] if r.get("loss") is not None]
        ax.plot([r["tokens"] / 1e6 for r in h], [r["loss"] / math.log(2) for r in h], label=f"{label} train", alpha=0.7)
        v = [r for r in run["history"] if r.get("val_loss") is not None]
        ax.plot([r["tokens"] / 1e6 for r in v], [r["val_loss"] / math.log(2) for r in v], "o--", label=f"{label} valid")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("loss (bits per byte)")
    ax.set_title("Training curves on the Brown corpus")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    paths["training_curves"] = str(_save(fig, out / "training_curves.png"))
    return paths


def _report(res: dict, en: dict, format_table1) -> str:
    s, m, tr = res["settings"], res["machine"], res["training"]
    L = [
        "# spikelm demo report", "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads)"
        + (f", GPU {m['cuda']}" if m["cuda"] else "") + f". Total wall time {res['timings']['total']:.0f} s.", "",
        f"Corpus: the Brown corpus, byte level ({res['corpus']['train_chars']:,} training bytes; unigram entropy "
        f"{res['corpus']['unigram_bits_per_byte']:.3f} bits/byte).", "",
        "## Training", "",
        "| model | parameters | steps | tokens | tokens/s | final validation loss (bits/byte) |", "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("RWKV-6 (ANN)", tr["rwkv6"]), ("SpikeGPT", tr["spikegpt"])):
        L.append(f"| {name} | {r['params']:,} | {r['steps']} | {r['tokens']:,} | {r['tokens_per_second']:,.0f} | {r['val_bits']:.4f} |")
    L += ["", f"Both models: {s['n_layer']} layers, width {s['n_embd']}, context {s['ctx_len']}, batch {s['batch_size']}, "
          f"{s['minutes'] / 2:g} minutes each. ![training curves](training_curves.png)", ""]
    ft = res.get("finetuning") or {}
    if ft:
        L += ["Spiking-aware fine-tuning (`spikelm finetune`, every parameter and the encoder scales, distilled from the "
              "ANN): each conversion at every site, from the same calibration as its converted row; the gap is the "
              "perplexity gap to the ANN on the validation windows.", "",
              "| model | steps | tokens (share of the ANN's) | seconds | validation gap converted | fine-tuned |",
              "|---|---:|---:|---:|---:|---:|"]
        for p, r in ft.items():
            share = r["tokens"] / max(1, tr["rwkv6"]["tokens"])
            L.append(f"| {p} (all) +FT | {r['steps']} | {r['tokens']:,} ({100 * share:.0f}%) | {r['seconds']:.0f} | "
                     f"{r['val_gap_before_pct']:+.2f}% | {r['val_gap_pct']:+.2f}% |")
        L.append("")
    t1 = res["table1"]
    wb = t1.get("weight_bits", 32)
    quant = (f" Every model stores its weights at {wb} bits (int8 with a scale per output channel, head and embedding "
             "included; each conversion calibrated on the quantised ANN, the +FT rows quantised after fine-tuning), the "
             f"networks Table 3 prices; the last row is the ANN with float32 weights, against the {wb}-bit ANN."
             if wb == 8 else f" Every model stores its weights at {wb} bits." if wb != 32 else "")
    L += ["## Table 1: perplexity and bits per byte", "", f"Scored on {t1['data']}; every model sees the same bytes. "
          "BPC here is bits per byte; PPL is per byte-token. The spiking rows are the ANN converted with each preset "
          "(calibrated on 8 x 4 x 128 bytes of the training split) at the paper's sites (time mixing); `(all)` rows "
          "encode every site, and `+FT` rows are those fine-tuned (above)." + quant, "", format_table1(t1["rows"], "BPC"), ""]
    L += ["## Table 2: few-shot multiple choice (accuracy, %)", "",
          f"{s['nlu_shots']}-shot, first {s['nlu_limit']} items of each task (splits as in `spikelm.evaluate.tasks`), "
          f"{wb}-bit weights; with so few items the standard error is about 10 points, so read the rows as a smoke test "
          "of the pipeline, not as a ranking. LAMBADA is last-word accuracy.", "", format_table2(res["table2"]), ""]

    def f(x: Any, fmt: str = ".2f") -> str:
        return "-" if x is None else (x if isinstance(x, str) else format(x, fmt))

    table = next(iter(en.values()))["summary"]["table"]
    lead = en.get("SpikeRWKV-4L") or next(iter(en.values()))
    L += ["## Table 3: energy per token", "",
          f"**Headline (SpikeRWKV-4L).** {lead['headline']}", "",
          f"Like for like: every model's weights stored at {wb} bits (the networks of Tables 1 and 2), the spiking "
          f"network priced at {table} and each baseline with {wb}-bit weights: the dense ANN (W{wb}A{wb}), the "
          f"equal-information ANN (W{wb}Ak: activations with as many levels as the spike code, k bits) and its "
          "zero-skipping twin (weight fetches and MACs only for nonzero inputs at the spike sites, as the spiking network "
          "skips silent ones). Elementwise work, WKV and the dense layers are priced alike on both sides; sign-flag spikes "
          "select add or subtract and cost no accumulate. EE = baseline / spiking network; break-even fr: the firing rate "
          "at which the spiking network would cost what the baseline costs, with SRAM (docs/energy.md).", "",
          f"| model | compute pJ | +SRAM pJ | EE vs W{wb}A{wb} compute | +SRAM | +DRAM B=1 | k | EE vs W{wb}Ak compute | "
          "+SRAM | EE vs zero-skipping compute | +SRAM | fr | break-even fr vs dense | vs zero-skipping |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in res["table3"].items():
        c = e["every_energy"]
        L.append(f"| {name} | {c['e_compute_pj']:,.0f} | {c['e_sram_pj']:,.0f} | {f(c['ee_dense_compute'])} | "
                 f"{f(c['ee_dense_sram'])} | {f(c['ee_dense_dram'])} | {f(c['quantised_bits'], 'd')} | "
                 f"{f(c['ee_equal_compute'])} | {f(c['ee_equal_sram'])} | {f(c['ee_zero_skip_compute'])} | "
                 f"{f(c['ee_zero_skip_sram'])} | {f(c['firing_rate'], '.3f')} | {f(c['break_even_dense_sram'], '.3f')} | "
                 f"{f(c['break_even_zero_skip_sram'], '.3f')} |")
    L += ["", "The paper's convention (SpikeRWKV Table 3): both sides at 45 nm fp32 (E_MAC 4.6 pJ, E_AC 0.9 pJ), compute "
          "only, on the same counts; `spike share` is the part spent on spike-driven accumulates; eq. 5: E_snn = C_in x fr "
          "x T x l x E_AC per neuron input, with the firing rate pooled over the spike-encoded inputs"
          + (f". Not like for like for networks of {wb}-bit weights." if wb != 32 else "."), "",
          "| model | pJ/token, fp32 (full count) | same model dense, fp32 | EE (dense / spiking) | spike share | fr | T x l "
          "| eq. 5 EE |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in res["table3"].items():
        p = e.get("paper")
        ee5 = (4.6 / (p["fr"] * p["T"] * p["l"] * 0.9)) if p and p["fr"] > 0 else None
        L.append(f"| {name} | {e['fp32_pj_per_token']:,.0f} | {e['fp32_pj_per_token_ann']:,.0f} | "
                 f"{e['fp32_pj_per_token_ann'] / e['fp32_pj_per_token']:.2f} | {100 * e['fp32_spike_share']:.1f}% | "
                 + (f"{p['fr']:.3f} | {p['T']}x{p['l']} | {ee5:.2f} |" if p else "- | - | - |"))
    L += ["", "![PPL vs energy](tradeoff.png)", "", "![PPL vs energy with SRAM](tradeoff_sram.png)", "",
          "![firing rates](firing_rates.png)", ""]
    L += [f"![energy parts: {name}]({Path(p).name})" for key, p in res["plots"].items() if key.startswith("parts:")
          for name in [key[6:]]] + [""]
    L += ["## Samples", ""]
    for name, smp in res["samples"].items():
        L += [f"**{name}** ({smp['tokens_per_second']:.0f} tokens/s):", "", "```", smp["prompt"] + smp["text"], "```", ""]
    L += ["## Timings (s)", "", "| stage | seconds |", "|---|---:|"]
    L += [f"| {k} | {v:.1f} |" for k, v in res["timings"].items()]
    L += ["", "Settings: `" + json.dumps(s) + "`", ""]
    return "\n".join(L)


def cmd_demo(out: str = "runs/demo", minutes: float = DemoSettings.minutes, fresh: bool = False, tiny: bool = False,
             weight_bits: WeightBits = "auto", overwrite: bool = False, progress: bool = True) -> int:
    """Run the main job at small scale and write report.md, results.json and plots.

    Trains a small RWKV-6 and a SpikeGPT on the embedded Brown corpus, converts the RWKV-6 with every
    SpikeRWKV preset, fine-tunes its SpikeRWKV-4L and -3L conversions at every site, and measures
    PPL/BPC, few-shot accuracy, energy and firing rates.

    Args:
        out: output folder (report.md, results.json, PNGs, cache/ and models/).
        minutes: training budget of the two models together, in minutes.
        fresh: delete the demo's own cache and trained models in the output folder first (nothing else there).
        tiny: a seconds-long smoke run (tiny models, few items): for tests and CI.
        weight_bits: the precision every model's weights are stored at (Tables 1-3, like for like): 32, 16 or 8; auto: 8.
        overwrite: write into a folder holding demo-named files (report.md, results.json, ...) that no earlier demo run recorded as its own; a folder holding other files is refused even so.
        progress: show progress bars on stderr.
    """
    bits = resolve_weight_bits(weight_bits, prices_energy=True)
    settings = DemoSettings(minutes=minutes, weight_bits=8 if bits is None else bits)
    if tiny:
        settings = DemoSettings(minutes=minutes if minutes != DemoSettings.minutes else 0.2, n_layer=1, n_embd=32,
                                head_size=16, ctx_len=32, batch_size=8, max_steps=30, eval_chars=2000, nlu_limit=2,
                                nlu_shots=1, energy_tokens=64, sample_tokens=16, finetune_steps=3,
                                weight_bits=settings.weight_bits)
    res = run_demo(out, settings, fresh=fresh, progress=progress_bars(progress), echo=print, overwrite=overwrite)
    print(f"\nreport:  {Path(out) / 'report.md'}\nresults: {Path(out) / 'results.json'}")
    for name, p in res["plots"].items():
        print(f"plot:    {p}  ({name})")
    return 0
