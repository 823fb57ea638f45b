"""The bad-input table: every command, fed what a new user feeds it, answers in one named line.

Each case runs one command line through :func:`spikelm.cli.main` (or the ``spikelm-lm-eval``
adapter's :func:`spikelm.cli.lm_eval.main`) in this process and asserts exit code 2, no
``Traceback`` on stderr, and one ``spikelm ...: error:`` line that names the file or flag. A few
cases run as real subprocesses, to show that nothing but that line reaches the terminal.

Malicious pickles pickle an object whose ``__reduce__`` calls ``os.system("touch MARKER")``: they
must be refused, and the marker must not exist afterwards.

Run as a script, the file runs the whole table outside pytest and prints its summary (inputs
tried, handled cleanly) as a Markdown table, for docs/results.md::

    PYTHONPATH=src python tests/cli/test_bad_inputs.py
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

from spikelm.checkpoints import save, save_official
from spikelm.cli import main
from spikelm.testing import make_rwkv6

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    """One bad command line; ``{d}`` in ``argv`` is the folder of prepared bad inputs."""

    kind: str  # what is wrong, for the summary
    argv: tuple[str, ...]  # argv[0] is the command ("spikelm-lm-eval" for the lm-eval adapter)
    names: str  # the error line must contain this: the file or flag at fault
    needs_no_cuda: bool = False  # the input is bad only on a machine without CUDA
    absent: str = ""  # the error line must not contain this (e.g. a key named twice)
    # "mounts": run as a process in a user and mount namespace (unshare) without network, where
    # {full} is a full file system and {ro} a read-only one; skipped where unshare is refused
    sandbox: str = ""
    env: tuple[tuple[str, str], ...] = ()  # extra environment of a sandboxed case ({full}, {ro}, {d} filled in)
    slow: bool = False  # a process of its own: run by `make test-slow` (the script runs every case)

    @property
    def command(self) -> str:
        return self.argv[0]

    @property
    def id(self) -> str:
        return " ".join(self.argv).replace("{d}/", "")


OK = "{d}/ok.pth"
CALIB = ("--calib-data", "{d}/good.txt")
TASKS = ("--tasks", "spikelm_bad_inputs", "--include_path", "{d}/lm_tasks")


def _lm(model_args: str, kind: str, names: str) -> Case:
    return Case(kind, ("spikelm-lm-eval", "--model", "spikelm", "--model_args", model_args, *TASKS), names)


CASES: list[Case] = [
    # --- checkpoints: missing, empty, corrupt, truncated, renamed keys, wrong shapes, not tensors
    Case("missing file", ("info", "{d}/missing.pth"), "missing.pth"),
    Case("empty file", ("info", "{d}/empty.pth"), "empty.pth"),
    Case("corrupt (random bytes)", ("info", "{d}/rand.pth"), "rand.pth"),
    Case("corrupt (random bytes)", ("info", "{d}/rand.safetensors"), "rand.safetensors"),
    Case("truncated", ("info", "{d}/half.pth"), "half.pth"),
    Case("truncated", ("info", "{d}/half.safetensors"), "half.safetensors"),
    Case("renamed key", ("info", "{d}/renamed_emb.safetensors"), "renamed_emb.safetensors"),
    Case("renamed key", ("info", "{d}/renamed_key.safetensors"), "renamed_key.safetensors"),
    Case("wrong shape", ("info", "{d}/shape.safetensors"), "shape.safetensors"),
    Case("wrong shape", ("info", "{d}/emb1d.pth"), "emb1d.pth"),
    Case("not tensors", ("info", "{d}/ints.pth"), "ints.pth"),
    Case("malicious pickle", ("info", "{d}/evil.pth"), "evil.pth"),
    Case("malicious pickle", ("info", "{d}/evil_legacy.pth"), "evil_legacy.pth"),
    Case("folder for a file", ("info", "{d}/empty_folder"), "empty_folder"),
    Case("corrupt config.json", ("info", "{d}/bad_config"), "config.json"),
    Case("corrupt config.json", ("eval", "{d}/bad_config", "--data", "{d}/good.txt"), "config.json"),
    Case("bad config.json value", ("eval", "{d}/bad_config_value", "--data", "{d}/good.txt"), "config.json"),
    Case("truncated", ("eval", "{d}/truncated_folder", "--data", "{d}/good.txt"), "model.safetensors"),
    Case("renamed key", ("eval", "{d}/renamed_key.safetensors", "--data", "{d}/good.txt"), "renamed_key.safetensors"),
    Case("wrong shape", ("eval", "{d}/shape.safetensors", "--data", "{d}/good.txt"), "shape.safetensors"),
    Case("malicious pickle", ("eval", "{d}/evil.pth", "--data", "{d}/good.txt"), "evil.pth"),
    Case("malicious pickle", ("generate", "{d}/evil.pth"), "evil.pth"),
    Case("malicious pickle", ("convert", "{d}/evil.pth", "--out", "{d}/out_evil", *CALIB), "evil.pth"),
    Case("malicious pickle", ("energy", "{d}/evil.pth", "--data", "{d}/good.txt"), "evil.pth"),
    Case("malicious pickle", ("nlu", "{d}/evil.pth", "--tasks", "{d}/items.jsonl"), "evil.pth"),
    Case("malicious pickle", ("sweep", "{d}/evil.pth", "--data", "{d}/good.txt"), "evil.pth"),
    Case("truncated", ("sweep", "{d}/half.pth", "--data", "{d}/good.txt"), "half.pth"),
    Case("file that is not a checkpoint", ("eval", "{d}/good.txt"), "good.txt"),
    # --- data: missing, empty, binary, too short, a folder without text
    Case("empty data", ("data", "prepare", "{d}/empty.txt"), "empty.txt"),
    Case("binary data", ("data", "prepare", "{d}/binary.txt"), "binary.txt"),
    Case("too-short data", ("data", "prepare", "{d}/short.txt"), "short.txt"),
    Case("missing file", ("data", "prepare", "{d}/missing.txt"), "missing.txt"),
    Case("folder without text", ("data", "prepare", "{d}/empty_folder"), "empty_folder"),
    Case("malformed argument", ("data", "frobnicate", "default"), "frobnicate"),
    Case("malformed flag", ("data", "prepare", "{d}/good.txt", "--tokenizer", "nosuch"), "nosuch"),
    Case("empty data", ("eval", OK, "--data", "{d}/empty.txt"), "empty.txt"),
    Case("binary data", ("eval", OK, "--data", "{d}/binary.txt"), "binary.txt"),
    Case("binary data", ("eval", OK, "--data", "{d}/binary.txt", "--whole-file"), "binary.txt"),
    Case("too-short data", ("eval", OK, "--data", "{d}/short.txt"), "short.txt"),
    Case("missing file", ("eval", OK, "--data", "{d}/missing.txt"), "missing.txt"),
    Case("empty data", ("convert", OK, "--out", "{d}/out_a", "--calib-data", "{d}/empty.txt"), "empty.txt"),
    Case("too-short data", ("convert", OK, "--out", "{d}/out_b", "--calib-data", "{d}/short.txt"), "short.txt"),
    Case("binary data", ("energy", OK, "--data", "{d}/binary.txt"), "binary.txt"),
    Case("empty data", ("train", "{d}/train.yaml", "--data", "{d}/empty.txt"), "empty.txt"),
    Case("binary data", ("train", "{d}/train.yaml", "--data", "{d}/binary.txt"), "binary.txt"),
    Case("too-short data", ("train", "{d}/train.yaml", "--data", "{d}/short.txt"), "short.txt"),
    Case("empty data", ("nlu", OK, "--tasks", "{d}/empty.txt"), "empty.txt"),
    Case("binary data", ("nlu", OK, "--tasks", "{d}/binary.jsonl"), "binary.jsonl"),
    Case("corrupt data", ("nlu", OK, "--tasks", "{d}/bad.jsonl"), "bad.jsonl"),
    Case("corrupt data", ("nlu", OK, "--tasks", "{d}/scalar.jsonl"), "scalar.jsonl"),
    Case("missing file", ("nlu", OK, "--tasks", "{d}/missing.jsonl"), "missing.jsonl"),
    # --- configs
    Case("missing file", ("train", "{d}/missing.yaml"), "missing.yaml"),
    Case("corrupt config", ("train", "{d}/broken.yaml"), "broken.yaml"),
    Case("binary data", ("train", "{d}/binary.yaml"), "binary.yaml"),
    Case("folder for a file", ("train", "{d}/empty_folder"), "empty_folder"),
    # --- flags: out of range, malformed, missing values, unknown
    Case("out-of-range flag", ("convert", OK, "--out", "{d}/out_c", "--T", "0", *CALIB), "T"),
    Case("out-of-range flag", ("convert", OK, "--out", "{d}/out_d", "--layers", "0", *CALIB), "layers"),
    Case("malformed flag", ("convert", OK, "--out", "{d}/out_e", "--layers", "abc"), "--layers"),
    Case("malformed flag", ("convert", OK, "--out", "{d}/out_f", "--preset", "nope"), "nope"),
    Case("out-of-range flag", ("convert", OK, "--out", "{d}/out_g", "--calib-batches", "0", *CALIB), "batch"),
    Case("missing flag", ("convert", OK), "--out"),
    Case("out-of-range flag", ("energy", OK, "--tokens", "-1"), "--tokens"),
    Case("out-of-range flag", ("energy", OK, "--chunk", "0"), "--chunk"),
    Case("out-of-range flag", ("energy", OK, "--e-mac", "-1"), "--e-mac"),
    Case("malformed flag", ("energy", OK, "--table", "nope"), "nope"),
    Case("malformed flag", ("energy", OK, "--split", "bogus", "--data", "{d}/good.txt"), "bogus"),
    Case("out-of-range flag", ("eval", OK, "--ctx", "-1"), "--ctx"),
    Case("out-of-range flag", ("eval", OK, "--chunk", "0"), "--chunk"),
    Case("out-of-range flag", ("eval", OK, "--batch-size", "0"), "--batch-size"),
    Case("malformed flag", ("eval", OK, "--split", "bogus", "--data", "{d}/good.txt"), "bogus"),
    Case("malformed flag", ("eval", OK, "--dtype", "fp8"), "--dtype"),
    Case("unknown flag", ("eval", OK, "--unknown-flag"), "--unknown-flag"),
    Case("out-of-range flag", ("generate", OK, "--top-p", "0"), "--top-p"),
    Case("out-of-range flag", ("generate", OK, "--top-p", "2"), "--top-p"),
    Case("out-of-range flag", ("generate", OK, "--temperature", "-1"), "--temperature"),
    Case("out-of-range flag", ("generate", OK, "--temperature", "nan"), "--temperature"),
    Case("out-of-range flag", ("generate", OK, "--top-k", "-3"), "--top-k"),
    Case("out-of-range flag", ("generate", OK, "--max-tokens", "0"), "--max-tokens"),
    Case("malformed flag", ("generate", OK, "--prompt", "lone \ud800 surrogate"), "--prompt"),
    Case("malformed flag", ("generate", OK, "--encoding", "nope"), "nope"),
    Case("out-of-range flag", ("init", "{d}/out_h", "--n-layer", "0"), "n_layer"),
    Case("out-of-range flag", ("init", "{d}/out_i", "--vocab-size", "-1"), "vocab_size"),
    Case("unknown flag", ("init", "{d}/out_j", "--layers", "abc"), "--layers"),
    Case("missing flag value", ("train", "{d}/train.yaml", "--max-steps"), "--max-steps"),
    Case("malformed flag", ("train", "{d}/train.yaml", "--max-steps", "abc"), "max_steps"),
    Case("unknown flag", ("train", "{d}/train.yaml", "--nosuchkey", "1"), "nosuchkey"),
    Case("malformed flag", ("sweep", OK, "--grid-T", "a,b"), "--grid-T"),
    Case("malformed flag", ("sweep", OK, "--presets", "nope"), "nope"),
    Case("out-of-range flag", ("sweep", OK, "--chunk", "0"), "--chunk"),
    Case("out-of-range flag", ("sweep", OK, "--ctx", "-1"), "--ctx"),
    Case("malformed flag", ("sweep", OK, "--calibration", "max,l2"), "--calibration"),
    # --- finetune
    Case("missing file", ("finetune", "{d}/missing.pth", "--preset", "SpikeRWKV-4L", "--out", "{d}/ft_a"), "missing.pth"),
    Case("missing flag", ("finetune", OK, "--out", "{d}/ft_b"), "--preset"),
    Case("malformed flag", ("finetune", OK, "--preset", "SpikeRWKV-9L", "--out", "{d}/ft_c"), "SpikeRWKV-9L"),
    Case("malformed flag", ("finetune", OK, "--preset", "SpikeRWKV-4L", "--train", "weights", "--out", "{d}/ft_d"), "train"),
    Case("malformed flag", ("finetune", OK, "--preset", "SpikeRWKV-4L", "--calibration", "l2", "--out", "{d}/ft_e"),
         "calibration"),
    Case("out-of-range flag", ("finetune", OK, "--preset", "SpikeRWKV-4L", "--weight-bits", "4", "--out", "{d}/ft_f"),
         "weight_bits"),
    Case("out-of-range flag", ("finetune", OK, "--preset", "SpikeRWKV-4L", "--steps", "0", "--out", "{d}/ft_g"),
         "max_steps"),
    Case("missing file", ("finetune", OK, "--preset", "SpikeRWKV-4L", "--teacher", "{d}/missing.pth", "--out", "{d}/ft_h"),
         "missing.pth"),
    Case("conflicting flags", ("convert", OK, "--out", "{d}/out_pre", "--preset", "SpikeRWKV-4L", "--layers", "3"), "--layers"),
    Case("out-of-range flag", ("nlu", OK, "--shots", "-1"), "--shots"),
    Case("out-of-range flag", ("nlu", OK, "--batch-size", "0"), "--batch-size"),
    Case("malformed flag", ("nlu", OK, "--tasks", "nosuchtask"), "nosuchtask"),
    Case("out-of-range flag", ("demo", "--minutes", "-1"), "--minutes"),
    Case("unknown flag", ("demo", "--bogus"), "--bogus"),
    Case("unknown command", ("bogus",), "bogus"),
    # --- devices
    Case("unavailable device", ("eval", OK, "--device", "tpu"), "--device"),
    Case("unavailable device", ("eval", OK, "--device", "cuda"), "--device", needs_no_cuda=True),
    Case("unavailable device", ("generate", OK, "--device", "cuda:3"), "--device", needs_no_cuda=True),
    Case("unavailable device", ("train", "{d}/train.yaml", "--device", "tpu"), "device"),
    Case("unavailable device", ("energy", OK, "--device", "tpu"), "--device"),
    # --- output paths: a file for a folder, a folder for a file, the input itself, a user's folder
    Case("file for a folder", ("init", "{d}/good.txt"), "good.txt"),
    Case("folder for a file", ("init", "{d}/empty_folder", "--official"), "empty_folder"),
    Case("user's folder", ("init", "{d}/user_folder", "--overwrite"), "notes.txt"),
    Case("output is the input", ("convert", OK, "--out", OK), "ok.pth"),
    Case("output is the input", ("convert", "{d}/ok_folder", "--out", "{d}/ok_folder", "--overwrite"), "ok_folder"),
    Case("user's folder", ("convert", OK, "--out", "{d}/user_folder", "--overwrite", *CALIB), "notes.txt"),
    Case("file for a folder", ("convert", OK, "--out", "{d}/good.txt/sub", *CALIB), "good.txt"),
    Case("folder for a file", ("nlu", OK, "--tasks", "{d}/items.jsonl", "--out", "{d}/empty_folder"), "empty_folder"),
    Case("file for a folder", ("energy", OK, "--plot", "{d}/good.txt/plots"), "good.txt"),
    Case("file for a folder", ("demo", "--out", "{d}/good.txt"), "good.txt"),
    Case("user's folder", ("demo", "--out", "{d}/user_folder"), "notes.txt"),
    # --- issue 27 ("trust, second round"): every output claimed before any work, resume files,
    # full disks and read-only targets, duplicate keys, a key named once
    Case("user's file in out_dir", ("train", "{d}/train.yaml", "--out-dir", "{d}/user_log"), "log.csv"),
    Case("user's file in out_dir", ("train", "{d}/train.yaml", "--out-dir", "{d}/user_final"), "final/essay.txt"),
    Case("user's file in out_dir", ("train", "{d}/train.yaml", "--out-dir", "{d}/user_final", "--overwrite"),
         "final/essay.txt"),
    Case("user's file in out_dir", ("train", "{d}/train.yaml", "--out-dir", "{d}/user_log", "--resume"), "log.csv"),
    Case("existing plot", ("energy", OK, "--plot", "{d}/plots/old", "--tokens", "8", "--data", "{d}/good.txt"),
         "old-energy.png"),
    Case("existing plot", ("energy", OK, "--plot", "{d}/plots/", "--tokens", "8", "--data", "{d}/good.txt"),
         "parts.png"),
    Case("existing file", ("nlu", OK, "--tasks", "{d}/items.jsonl", "--out", "{d}/old.json"), "old.json"),
    Case("user's folder", ("demo", "--out", "{d}/demo_named", "--tiny"), "report.md"),
    Case("malicious pickle", ("train", "{d}/train.yaml", "--out-dir", "{d}/run_evil_opt", "--resume"), "optimizer.pt"),
    Case("malicious pickle", ("train", "{d}/train.yaml", "--out-dir", "{d}/run_evil_rng", "--resume"), "rng_rank0.pt"),
    Case("truncated", ("train", "{d}/train.yaml", "--out-dir", "{d}/run_half_opt", "--resume"), "optimizer.pt"),
    Case("corrupt data", ("train", "{d}/train.yaml", "--out-dir", "{d}/run_bad_state", "--resume"), "trainer_state.json"),
    Case("corrupt data", ("train", "{d}/train.yaml", "--out-dir", "{d}/run_bad_args", "--resume"), "train_args.json"),
    Case("missing file", ("train", "{d}/train.yaml", "--out-dir", "{d}/run_no_opt", "--resume"), "optimizer.pt"),
    Case("duplicate key", ("train", "{d}/dup.yaml"), "'lr' appears twice"),
    Case("duplicate key", ("train", "{d}/dup.json"), "'lr' appears twice"),
    Case("out-of-range flag", ("train", "{d}/train.yaml", "--model.vocab_size", "10"), "model.vocab_size",
         absent="model.model"),
    Case("full disk", ("convert", OK, "--out", "{full}/conv", *CALIB), "no space left", sandbox="mounts"),
    Case("full disk", ("train", "{d}/train.yaml", "--out-dir", "{full}/run", "--save-every", "1"), "no space left",
         sandbox="mounts", slow=True),
    Case("full disk", ("data", "prepare", "{d}/good.txt"), "SPIKELM_CACHE", sandbox="mounts",
         env=(("SPIKELM_CACHE", "{full}/cache"),), slow=True),
    Case("read-only target", ("convert", OK, "--out", "{ro}/conv", *CALIB), "read-only", sandbox="mounts"),
    Case("read-only target", ("train", "{d}/train.yaml", "--out-dir", "{ro}/run"), "read-only", sandbox="mounts",
         slow=True),
    Case("read-only target", ("energy", OK, "--plot", "{ro}/plots/", "--tokens", "8", "--data", "{d}/good.txt"),
         "read-only", sandbox="mounts", slow=True),
    Case("no network, default calibration", ("sweep", OK, "--data", "{d}/good.txt", "--presets", "SpikeRWKV-4L"),
         "--calib-data", sandbox="mounts", env=(("SPIKELM_CACHE", "{d}/empty_cache"),), slow=True),
    # --- more of our own (issue 27): inputs no other test tried
    Case("out-of-range flag", ("train", "{d}/train.yaml", "--lr", "-1"), "lr"),
    Case("out-of-range flag", ("train", "{d}/train.yaml", "--min-lr", "1"), "min_lr"),
    Case("out-of-range flag", ("train", "{d}/train.yaml", "--max-minutes", "-1"), "max_minutes"),
    Case("out-of-range flag", ("train", "{d}/train.yaml", "--batch-size", "3", "--grad-accum", "2"), "batch_size"),
    Case("malformed flag", ("train", "{d}/train.yaml", "--precision", "fp8"), "precision"),
    Case("malformed flag", ("train", "{d}/train.yaml", "--model.kind", "nosuch"), "model.kind", absent="config.json"),
    Case("corrupt config", ("train", "{d}/list.yaml"), "list.yaml"),
    Case("missing checkpoint", ("train", "{d}/train.yaml", "--out-dir", "{d}/run_ok", "--resume-from", "999"),
         "--resume-from 999"),
    Case("too-short data", ("eval", OK, "--data", "{d}/two_files"), "two_files"),
    Case("out-of-range flag", ("eval", OK, "--max-chars", "-5"), "--max-chars"),
    Case("malformed flag", ("sweep", OK, "--presets", "none", "--grid-T", "1"), "--grid-T"),
    Case("out-of-range flag", ("sweep", OK, "--energy-tokens", "0"), "--energy-tokens"),
    Case("malformed flag", ("energy", OK, "--data", ","), "--data"),
    Case("malformed flag", ("energy", "{d}/converted", "--preset", "SpikeRWKV-4L", "--data", "{d}/good.txt"),
         "already spike-encoded"),
    Case("out-of-range flag", ("nlu", OK, "--limit", "-1"), "--limit"),
    Case("malformed flag", ("nlu", OK, "--tasks", ","), "--tasks"),
    Case("malformed flag", ("convert", OK, "--out", "{d}/out_k", "--calibration", "nope", *CALIB), "nope"),
    Case("malformed flag", ("convert", OK, "--out", "{d}/out_l", "--granularity", "nope", *CALIB), "nope"),
    Case("out-of-range flag", ("convert", OK, "--out", "{d}/out_m", "--calibration", "percentile", "--percentile", "150",
                               *CALIB), "percentile"),
    Case("malformed flag", ("convert", OK, "--out", "{d}/out_n", "--sites", "nope", *CALIB), "nope"),
    Case("wrong size", ("data", "prepare", "enwik8:{d}/good.txt"), "good.txt"),
    Case("folder without text", ("data", "prepare", "wikitext-103:{d}/empty_folder"), "empty_folder"),
    Case("not prepared", ("data", "info", "{d}/unprepared.txt"), "data prepare"),
    Case("out-of-range flag", ("init", "{d}/out_o", "--n-embd", "40", "--head-size", "16"), "head_size"),
    Case("truncated", ("info", "{d}/no_weights"), "no_weights"),
    # --- the lm-evaluation-harness adapter
    _lm("path={d}/evil.pth", "malicious pickle", "evil.pth"),
    _lm("path={d}/half.safetensors", "truncated", "half.safetensors"),
    _lm("path={d}/missing.pth", "missing file", "missing.pth"),
    _lm("path={d}/ok.pth,bogus=1", "unknown flag", "bogus"),
    _lm("path={d}/ok.pth,dtype=fp8", "malformed flag", "dtype"),
    _lm("path={d}/ok.pth,device=tpu", "unavailable device", "tpu"),
    _lm("path={d}/ok.pth,batch_size=abc", "malformed flag", "batch_size"),
]


class _Evil:
    """Unpickling this runs ``touch MARKER``: spikelm must refuse the file before that can happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def marker_path(d: Path) -> Path:
    return d / "PWNED"


def build_inputs(d: Path) -> Path:
    """Write every bad (and the few good) inputs the cases name into the folder ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    model = make_rwkv6(n_layer=1, n_embd=32, head_size=16)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    ok = save_official(model, d / "ok.pth")
    save(model, d / "ok_folder")
    save_file(sd, str(d / "ok.safetensors"))
    raw, st = ok.read_bytes(), (d / "ok.safetensors").read_bytes()
    (d / "half.pth").write_bytes(raw[: len(raw) // 2])
    (d / "half.safetensors").write_bytes(st[: len(st) // 2])
    rng = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist())
    (d / "rand.pth").write_bytes(noise)
    (d / "rand.safetensors").write_bytes(noise)
    (d / "empty.pth").write_bytes(b"")
    save_file({("emb.weightX" if k == "emb.weight" else k): v for k, v in sd.items()}, str(d / "renamed_emb.safetensors"))
    save_file({k.replace("att.key.weight", "att.key.weightX"): v for k, v in sd.items()}, str(d / "renamed_key.safetensors"))
    save_file({**sd, "blocks.0.ffn.value.weight": torch.zeros(3, 5)}, str(d / "shape.safetensors"))
    torch.save({**sd, "emb.weight": torch.zeros(5)}, d / "emb1d.pth")
    torch.save({"emb.weight": 3, "blocks.0.att.time_maa_x": 4}, d / "ints.pth")
    evil = _Evil(marker_path(d))
    torch.save({"emb.weight": evil}, d / "evil.pth")
    (d / "evil_legacy.pth").write_bytes(pickle.dumps({"emb.weight": evil}))
    shutil.copytree(d / "ok_folder", d / "bad_config")
    (d / "bad_config" / "config.json").write_text('{"kind": "rwkv6", "n_layer": ')
    shutil.copytree(d / "ok_folder", d / "bad_config_value")
    cfg = (d / "ok_folder" / "config.json").read_text().replace('"n_layer": 1', '"n_layer": "one"')
    (d / "bad_config_value" / "config.json").write_text(cfg)
    shutil.copytree(d / "ok_folder", d / "truncated_folder")
    blob = (d / "ok_folder" / "model.safetensors").read_bytes()
    (d / "truncated_folder" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    (d / "empty_folder").mkdir(exist_ok=True)
    (d / "user_folder").mkdir(exist_ok=True)
    (d / "user_folder" / "notes.txt").write_text("my notes\n")
    # text: many lines, so that the splitter can cut valid and test at line starts
    (d / "good.txt").write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400)))
    (d / "empty.txt").write_text("")
    (d / "short.txt").write_text("hi\n")
    (d / "binary.txt").write_bytes(b"\xff\xfe\x80 not UTF-8 \xc3\x28\n" * 2000)
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x80\n" * 10)
    (d / "bad.jsonl").write_text("{not json\n")
    (d / "scalar.jsonl").write_text("3\n")
    (d / "items.jsonl").write_text('{"context": "The sky is", "choices": ["blue", "green"], "label": 0}\n')
    (d / "broken.yaml").write_text("model: [\n  kind: rwkv6\n")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81" * 100)
    (d / "train.yaml").write_text(
        "model:\n  kind: rwkv6\n  n_layer: 1\n  n_embd: 32\n  head_size: 16\n"
        f"data: {d / 'good.txt'}\nctx_len: 16\nbatch_size: 2\nmax_steps: 2\neval_batches: 1\nout_dir: {d / 'run'}\n"
    )
    _issue27_inputs(d, model)
    # a tiny lm-eval task: the adapter's errors come before any of its data is read
    (d / "lm_tasks").mkdir(exist_ok=True)
    (d / "lm_tasks" / "bad_inputs.yaml").write_text(
        "task: spikelm_bad_inputs\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {d / 'items.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
    )
    return d


def _issue27_inputs(d: Path, model) -> None:
    """The inputs of the issue-27 cases: users' files in run folders, old plots, checkpoints of a
    real one-step run with one file replaced (a pickle that runs code, a cut file, bad JSON)."""
    from spikelm.configfile import load_train_args
    from spikelm.train import train

    (d / "user_log").mkdir(exist_ok=True)
    (d / "user_log" / "log.csv").write_text("mine\n")
    (d / "user_final" / "final").mkdir(parents=True, exist_ok=True)
    (d / "user_final" / "final" / "essay.txt").write_text("my essay\n")
    (d / "plots").mkdir(exist_ok=True)
    for name in ("old-energy.png", "old-firing.png", "old-parts.png", "parts.png"):
        (d / "plots" / name).write_bytes(b"my plot")
    (d / "old.json").write_text('{"mine": true}\n')
    (d / "demo_named").mkdir(exist_ok=True)
    (d / "demo_named" / "report.md").write_text("# my report\n")
    (d / "full").mkdir(exist_ok=True)
    (d / "ro").mkdir(exist_ok=True)
    (d / "empty_cache").mkdir(exist_ok=True)
    (d / "dup.yaml").write_text((d / "train.yaml").read_text() + "lr: 0.001\nlr: 0.002\n")
    (d / "dup.json").write_text('{"lr": 0.001, "max_steps": 2, "lr": 0.002}\n')
    (d / "list.yaml").write_text("- kind: rwkv6\n- n_layer: 1\n")
    (d / "unprepared.txt").write_text("Text that no case prepares.\n" * 100)
    (d / "two_files").mkdir(exist_ok=True)
    for i in range(2):
        (d / "two_files" / f"{i}.txt").write_text("Some text of a file. " * 50)
    (d / "no_weights").mkdir(exist_ok=True)
    shutil.copy(d / "ok_folder" / "config.json", d / "no_weights" / "config.json")
    save(_converted(model, d), d / "converted")
    # a real run with a checkpoint at step 1 (the table's train.yaml, one step, saved)
    args = load_train_args(d / "train.yaml", {"max_steps": 1, "save_every": 1, "out_dir": str(d / "run_ok")})
    with contextlib.redirect_stderr(io.StringIO()):
        train(args)
    evil = _Evil(marker_path(d))
    step = Path("checkpoints") / "step_000001"
    for name, change in (("run_evil_opt", lambda c: torch.save({"state": evil}, c / "optimizer.pt")),
                         ("run_evil_rng", lambda c: torch.save({"torch": evil}, c / "rng_rank0.pt")),
                         ("run_half_opt", lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:300])),
                         ("run_bad_state", lambda c: (c / "trainer_state.json").write_text('{"step": 1,')),
                         ("run_bad_args", lambda c: (c / "train_args.json").write_text("[1, 2")),
                         ("run_no_opt", lambda c: (c / "optimizer.pt").unlink())):
        shutil.copytree(d / "run_ok", d / name, symlinks=True)
        change(d / name / step)


def _converted(model, d: Path):
    import copy

    from spikelm.convert import convert, preset_config

    calib = [torch.randint(0, 256, (2, 16))]
    return convert(copy.deepcopy(model), preset_config("SpikeRWKV-4L"), calib)


@contextlib.contextmanager
def _lm_eval_without_builtin_tasks():
    """Index only --include_path's tasks: the harness's own index of every task takes ~40 s."""
    import lm_eval.tasks  # optional heavy dependency (the eval extra)

    class OnlyIncluded(lm_eval.tasks.TaskManager):
        def __init__(self, *args, **kwargs):
            kwargs["include_defaults"] = False
            super().__init__(*args, **kwargs)

    with mock.patch.object(lm_eval.tasks, "TaskManager", OnlyIncluded), mock.patch.object(sys, "argv", list(sys.argv)):
        yield


def can_sandbox() -> bool:
    """Whether this machine lets an unprivileged process make a user, mount and network namespace."""
    if shutil.which("unshare") is None:
        return False
    try:
        res = subprocess.run(["unshare", "-rmn", "sh", "-c", "mount -t tmpfs tmpfs /mnt || exit 1"],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def _run_sandboxed(case: Case, d: Path) -> tuple[int | str, str]:
    """The case as a process where ``{full}`` is a 16 KiB tmpfs filled up, ``{ro}`` a read-only
    tmpfs, and there is no network (its own network namespace)."""
    full, ro = d / "full", d / "ro"
    fill = lambda s: s.replace("{d}", str(d)).replace("{full}", str(full)).replace("{ro}", str(ro))  # noqa: E731
    argv = [fill(a) for a in case.argv]
    # no compiled kernels: no build of them to wait for (none of these cases is about them)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SPIKELM_NO_CPP_KERNELS": "1", **{k: fill(v) for k, v in case.env}}
    script = (f"mount -t tmpfs -o size=16k tmpfs {shlex.quote(str(full))} && "
              f"(cat /dev/zero > {shlex.quote(str(full / 'filler'))} 2>/dev/null; true) && "
              f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(ro))} && "
              f"exec {shlex.quote(sys.executable)} -m spikelm {' '.join(shlex.quote(a) for a in argv)}")
    res = subprocess.run(["unshare", "-rmn", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    return res.returncode, res.stderr.replace(str(d) + "/", "")


def run_case(case: Case, d: Path) -> tuple[int | str, str]:
    """Run one case in this process; return (exit code, or what escaped, and stderr)."""
    if case.sandbox:
        return _run_sandboxed(case, d)
    argv = [a.replace("{d}", str(d)) for a in case.argv]
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            if case.command == "spikelm-lm-eval":
                from spikelm.cli.lm_eval import main as lm_eval_main

                with _lm_eval_without_builtin_tasks():
                    rc: int | str = lm_eval_main(argv[1:])
            else:
                rc = main(argv)
    except SystemExit as e:  # argparse exiting instead of returning: not how spikelm reports errors
        rc = f"SystemExit({e.code})"
    except BaseException as e:  # noqa: BLE001 (anything escaping main is what this table looks for)
        rc = f"{type(e).__name__}: {e}"
    return rc, err.getvalue().replace(str(d) + "/", "")


def error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("spikelm") and ": error: " in ln]
    return lines[-1] if len(lines) == 1 else ""


def handled_cleanly(case: Case, rc: int | str, stderr: str) -> bool:
    line = error_line(stderr)
    return rc == 2 and "Traceback" not in stderr and case.names in line and not (case.absent and case.absent in line)


SANDBOX = can_sandbox()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return build_inputs(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    # Text files are prepared into a throwaway cache; no case reads the `default` corpus.
    monkeypatch.setenv("SPIKELM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_table_is_broad():
    assert len(CASES) >= 40
    commands = {c.command for c in CASES}
    assert commands >= {"info", "init", "data", "train", "finetune", "eval", "generate", "convert", "sweep", "energy", "nlu",
                        "demo", "spikelm-lm-eval"}
    assert len({c.id for c in CASES}) == len(CASES), "duplicate cases"


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c.slow else []) for c in CASES],
                         ids=[c.id for c in CASES])
def test_bad_input_is_a_named_error(case: Case, inputs: Path, cache: Path):
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so this device is not a bad input")
    if case.command == "spikelm-lm-eval":
        pytest.importorskip("lm_eval")
    if case.sandbox and not SANDBOX:
        pytest.skip("this machine refuses unprivileged user namespaces (unshare -rmn): no tmpfs to fill")
    rc, stderr = run_case(case, inputs)
    assert rc == 2, f"exit {rc!r}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    line = error_line(stderr)
    assert line, f"no single `spikelm ...: error:` line in:\n{stderr}"
    assert case.names in line, f"the message does not name {case.names!r}: {line}"
    assert not (case.absent and case.absent in line), f"the message says {case.absent!r}: {line}"
    assert not marker_path(inputs).exists(), "a pickled os.system call ran"
    assert not list(inputs.rglob(".*.tmp-*")), "a temporary file was left behind"


def test_output_paths_stay_as_they_were(inputs: Path, cache: Path):
    """The refused outputs leave the user's files and folders exactly as they were."""
    for case in CASES:
        if case.kind in ("user's folder", "output is the input", "file for a folder", "folder for a file",
                         "user's file in out_dir", "existing plot", "existing file"):
            run_case(case, inputs)
    assert (inputs / "user_folder" / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in (inputs / "user_log").iterdir()) == ["log.csv"]
    assert (inputs / "user_log" / "log.csv").read_text() == "mine\n"
    assert sorted(p.name for p in (inputs / "user_final").rglob("*")) == ["essay.txt", "final"]
    assert all(p.read_bytes() == b"my plot" for p in (inputs / "plots").iterdir())
    assert (inputs / "old.json").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in (inputs / "demo_named").iterdir()) == ["report.md"]
    assert sorted(p.name for p in (inputs / "user_folder").iterdir()) == ["notes.txt"]
    assert list((inputs / "empty_folder").iterdir()) == []
    assert (inputs / "good.txt").is_file()


def _spikelm(*args: str | bytes, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SPIKELM_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "spikelm", *args], cwd=cwd, env=env, capture_output=True, timeout=300)


@pytest.mark.parametrize(
    "args,names",
    [
        (("info", "evil.pth"), b"evil.pth"),
        (("train", "train.yaml", "--max-steps"), b"--max-steps"),
    ],
)
def test_the_terminal_sees_one_line(inputs: Path, args, names):
    """As a real process: exit 2 and one line on stderr, nothing else (no traceback, no pickled code run)."""
    res = _spikelm(*args, cwd=inputs)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith(b"spikelm ") and b": error: " in lines[0], res.stderr
    assert names in lines[0]
    assert not marker_path(inputs).exists()


def test_prompt_bytes_that_are_not_utf8_reach_the_model_as_bytes(inputs: Path):
    """Invalid UTF-8 in argv arrives as surrogate escapes; the byte tokenizer feeds those bytes back."""
    res = _spikelm("generate", "ok.pth", "--prompt", b"caf\xe9 \xff", "--max-tokens", "3", "--json",
                   cwd=inputs)
    assert res.returncode == 0 and b"Traceback" not in res.stderr, res.stderr
    assert b'"prompt_tokens": 6' in res.stdout  # c a f 0xE9 space 0xFF: one token per byte


def summary(results: list[tuple[Case, bool]]) -> str:
    from spikelm.markdown import md_table

    from spikelm.cli import COMMANDS

    def row(c: Case) -> str:
        return c.command if c.command in COMMANDS or c.command == "spikelm-lm-eval" else "(not a command)"

    tried, clean = Counter(row(c) for c, _ in results), Counter(row(c) for c, ok in results if ok)
    rows = [[cmd, tried[cmd], clean[cmd]] for cmd in sorted(tried)]
    rows.append(["**all**", sum(tried.values()), sum(clean.values())])
    kinds = Counter(c.kind for c, _ in results)
    return (md_table(["command", "inputs tried", "handled cleanly"], rows)
            + "\n\nkinds: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))


if __name__ == "__main__":  # the summary for docs/results.md: the whole table, run outside pytest
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SPIKELM_CACHE"] = str(Path(tmp) / "cache")
        d = build_inputs(Path(tmp) / "inputs")
        results = []
        for case in CASES:
            if (case.needs_no_cuda and torch.cuda.is_available()) or (case.sandbox and not SANDBOX):
                continue
            rc, stderr = run_case(case, d)
            ok = handled_cleanly(case, rc, stderr) and not marker_path(d).exists()
            results.append((case, ok))
            if not ok:
                print(f"NOT CLEAN: {case.id}: exit {rc!r}\n{stderr}", file=sys.stderr)
        print(summary(results))
