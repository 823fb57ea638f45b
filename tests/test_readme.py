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


def _command_lines(text: str) -> list[str]:
    """The command lines of the ```bash blocks of ``text`` (comments after '#' dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [ln.split("  #")[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks."""
    return _command_lines(README.read_text())


# The README sections a user follows in order on their own text, end to end: the second continues
# from the model the first trains.
WALKTHROUGH = ("Your own text", "Spiking-aware fine-tuning")


def section_commands(title: str) -> list[str]:
    """The command lines of the bash blocks under the README heading ``## title``, in order."""
    m = re.search(rf"^## {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", README.read_text(), flags=re.S | re.M)
    assert m, f"README.md has no section '## {title}'"
    return _command_lines(m[1])


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
    "spikelm finetune": ["--steps", "2", "--ctx-len", "16", "--batch-size", "2", "--eval-batches", "1", "--calib-batches", "1",
                         "--calib-ctx", "16", "--eval-every", "0", "--save-every", "0", "--warmup-steps", "1"],
}
# Options whose value the smoke run shrinks in place, where a README line gives them (appending the
# option to a line without it would change what the line does).
SHRINK_VALUES = {"--finetune-steps": "1"}


def shrink_values(argv: list[str]) -> list[str]:
    return [SHRINK_VALUES[argv[i - 1]] if i > 0 and argv[i - 1] in SHRINK_VALUES else a for i, a in enumerate(argv)]


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
    argv = shrink_values(shlex.split(line))
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


def walkthrough_commands() -> list[str]:
    return [ln for title in WALKTHROUGH for ln in section_commands(title)]


@pytest.mark.parametrize("line", [ln for ln in readme_commands() if ln not in walkthrough_commands()])
def test_readme_command_runs(line, sandbox, monkeypatch):
    if line.startswith("spikelm-lm-eval"):
        pytest.importorskip("lm_eval")
    _smoke(line, sandbox, monkeypatch)


def test_readme_lists_every_op_and_its_backends():
    """The README's table of ops and backends is spikelm.ops.backend.paths_table() (add an op to
    OPS and the README must follow)."""
    from spikelm.ops.backend import paths_table

    assert paths_table() in README.read_text()


def _own_text(n_sentences: int = 700) -> str:
    """A small English-like text file (deterministic): enough to split, train two steps and sample."""
    subj = ["The river", "A miller", "The old town", "My friend", "The teacher", "A small bird"]
    verb = ["runs past", "looks at", "remembers", "follows", "carries", "paints"]
    obj = ["the mill", "a green field", "the long road", "an apple tree", "the evening light"]
    return "".join(f"{subj[i % 6]} {verb[i * 7 % 6]} {obj[i * 5 % 5]}.{chr(10) if i % 5 == 4 else ' '}"
                   for i in range(n_sentences))


def test_your_own_text_end_to_end(tmp_path, monkeypatch, capsys):
    """The README's "Your own text" commands, then its fine-tuning ones, read from the README (not a
    copy), run in order in a fresh folder on a small text file, each with tiny settings (SHRINK):
    prepare, train (both models), eval, sweep and generate on the model the training wrote, then
    fine-tune it and evaluate the result, as a user would."""
    lines = walkthrough_commands()
    assert len(lines) >= 4 and all(shlex.split(ln)[0] == "spikelm" for ln in lines), lines
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPIKELM_CACHE", str(tmp_path / "cache"))
    words = [w for ln in lines for w in shlex.split(ln)]
    texts = sorted({w for w in words if w.endswith(".txt")})  # the user's text file(s) the section names
    assert texts, "the section names no text file"
    for name in texts:
        Path(name).write_text(_own_text(), encoding="utf-8")
    # TINY_TRAIN's --data is the sandbox's file: here, the section's own
    tiny_train = [a if a != "my_text.txt" else texts[0] for a in TINY_TRAIN]
    shrink = dict(SHRINK, **{"spikelm train": tiny_train})
    trained = []
    for line in lines:
        argv = shrink_values(shlex.split(line))
        argv = [str(REPO / a) if a.startswith("configs/") and not Path(a).exists() else a for a in argv]
        extra = shrink[" ".join(argv[:2])]
        if argv[1] in ("train", "finetune"):
            if "spikegpt" in argv[2]:  # SpikeGPT has no heads
                i = extra.index("--model.head_size")
                extra = extra[:i] + extra[i + 2:]
            out = "--out-dir" if argv[1] == "train" else "--out"
            assert out in argv, f"{line}: the README should say where the run goes"
            trained.append(Path(argv[argv.index(out) + 1]))
        capsys.readouterr()
        assert main(["-q", *argv[1:], *extra]) == 0, f"{line}\n{capsys.readouterr().err[-3000:]}"
        out = capsys.readouterr().out
        if argv[1] in ("eval", "sweep", "generate"):
            assert out.strip(), f"{line}: printed nothing"
            assert Path(argv[2]) in [t / "final" for t in trained], f"{line}: not a model the section trained"
    import spikelm

    for run in trained:  # each training left its final model where the section reads it
        assert spikelm.load(run / "final") is not None
