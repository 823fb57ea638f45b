"""Every command shown in README.md runs: a smoke test of each, with tiny settings.

The commands are read from the README's ```bash blocks, so a command added there without a
smoke test here fails ``test_every_readme_command_has_a_smoke_test``. Each smoke run is the
README line itself with its placeholders (a 1.6B checkpoint, the user's text, output folders)
replaced by tiny local stand-ins and a few options appended that shrink the work (later options
win in argparse). ``make demo`` / ``make test`` are the Makefile's targets: ``make test`` is what
CI runs and ``tests/cli/test_demo.py`` runs ``spikelm demo`` with tiny settings.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spikelm.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CKPT = "RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth"
# Shrinks any training config (the GPU one too: its 2B-token budget, compile and grad_accum go).
TINY_TRAIN = ["--max-steps", "2", "--max-tokens", "0", "--model.n_layer", "1", "--model.n_embd", "64",
              "--model.head_size", "16", "--ctx-len", "32", "--batch-size", "2", "--grad-accum", "1",
              "--warmup-steps", "1", "--eval-every", "0", "--save-every", "0", "--eval-batches", "1",
              "--compile", "false", "--data", "my_text.txt"]


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks (comments after '#' dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [ln.split("  #")[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


# The extra options of each command's smoke run, by the README line's first two words.
SHRINK = {
    "spikelm data": [],
    "spikelm train": TINY_TRAIN,
    "spikelm eval": ["--max-chars", "1500", "--no-progress"],
    "spikelm sweep": ["--max-chars", "600", "--presets", "SpikeRWKV-4L"],
    "spikelm generate": ["--max-tokens", "3"],
    "spikelm info": [],
    "spikelm convert": ["--calib-batches", "1", "--calib-ctx", "16"],
    "spikelm energy": ["--tokens", "48"],
    "spikelm nlu": ["--limit", "2", "--tasks", str(REPO / "tests/evaluate/data/tiny_mc.jsonl")],
    "spikelm finetune": ["--steps", "2", "--ctx-len", "32", "--batch-size", "2", "--eval-batches", "1", "--eval-every", "0",
                         "--save-every", "0", "--calib-batches", "1", "--calib-ctx", "32", "--warmup-steps", "1",
                         "--no-progress"],
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A working folder with the README's stand-ins: my_text.txt (real English from the embedded
    corpus when it is prepared), the tiny official checkpoint, a local harness task."""
    from conftest import make_rwkv6
    from spikelm.checkpoints import save_official

    d = tmp_path_factory.mktemp("readme")
    text = None
    try:
        from spikelm.data.build import prepare

        text = (prepare("default").path / "valid.txt").read_text(encoding="utf-8")[:20_000]
    except Exception:  # noqa: BLE001 - no prepared corpus: any English will do
        pass
    (d / "my_text.txt").write_text(text or ("The river ran past the mill and the town. " * 500), encoding="utf-8")
    model = make_rwkv6(n_layer=1, n_embd=32, vocab_size=65536, head_size=16, seed=0)  # World vocabulary
    save_official(model, d / CKPT)
    tasks = d / "my_tasks"
    tasks.mkdir()
    (tasks / "my_task.yaml").write_text(
        "task: my_task\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {REPO / 'tests/evaluate/data/tiny_mc.jsonl'}\n  cache_dir: {d / 'hf'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_target: label\ndoc_to_choice: choices\n'
        "metric_list:\n  - metric: acc\n"
    )
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smoke(line: str, d: Path, monkeypatch) -> None:
    argv = shlex.split(line)
    argv = [str(REPO / a) if a.startswith("configs/") else a for a in argv]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", SPIKELM_CACHE=str(d / "cache"),
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    if argv[0] == "make":
        targets = re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), flags=re.M)
        assert argv[1] in targets
        return
    if argv[0] == "spikelm":
        monkeypatch.chdir(d)
        monkeypatch.setenv("SPIKELM_CACHE", str(d / "cache"))
        extra = SHRINK[" ".join(argv[:2])]
        if argv[1] == "train" and "--out-dir" not in argv:  # the config's own out_dir: keep it apart
            extra = extra + ["--out-dir", str(d / "runs" / Path(argv[2]).stem)]
        if argv[1] == "sweep" and "--finetune-steps" in argv:  # one step of each fine-tune
            extra = extra + ["--finetune-steps", "1"]
        if argv[1] == "train" and "spikegpt" in argv[2]:  # SpikeGPT has no heads
            i = extra.index("--model.head_size")
            extra = extra[:i] + extra[i + 2:]
        assert main(["-q", *argv[1:], *extra]) == 0, line
        return
    if argv[0] == "spikelm-lm-eval":
        cmd = [sys.executable, "-m", "spikelm.cli.lm_eval", *argv[1:], "--limit", "2"]
        proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "my_task" in proc.stdout
        return
    if argv[0] == "torchrun":
        opts = {"--nnodes": "1", "--node-rank": "0", "--master-addr": "127.0.0.1", "--master-port": str(_free_port())}
        out = []
        it = iter(argv[1:])
        for a in it:
            if a in opts:
                out += [a, opts[a]]
                next(it)
            elif a == "--nproc-per-node":
                out += [a, "2" if "--nnodes" not in argv else "1"]
                next(it)
            else:
                out.append(a)
        if "--nnodes" not in argv:
            out = ["--standalone", *out]
        cmd = [sys.executable, "-m", "torch.distributed.run", *out, *TINY_TRAIN, "--no-progress",
               "--out-dir", str(d / "runs" / f"ddp-{len(argv)}")]
        proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return
    raise AssertionError(f"no smoke test for README command: {line}")


def test_every_readme_command_has_a_smoke_test():
    lines = readme_commands()
    assert len(lines) >= 15
    known = {"make", "spikelm", "spikelm-lm-eval", "torchrun"}
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] in known, line
        if argv[0] == "spikelm":
            assert " ".join(argv[:2]) in SHRINK, line


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_runs(line, sandbox, monkeypatch):
    if line.startswith("spikelm-lm-eval"):
        pytest.importorskip("lm_eval")
    _smoke(line, sandbox, monkeypatch)


def test_readme_lists_every_op_and_its_backends():
    """The README's table of ops and backends is spikelm.ops.backend.paths_table() (add an op to
    OPS and the README must follow)."""
    from spikelm.ops.backend import paths_table

    assert paths_table() in README.read_text()
