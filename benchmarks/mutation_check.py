"""Mutation check: plant known kinds of bugs, one at a time, and report which tests catch them.

Run: ``python benchmarks/mutation_check.py`` (or ``make mutations``; minutes on 2 CPU cores; not
part of CI). Each planted bug is a small source edit (exact text replaced, which must occur once)
made in a temporary copy of the repository (the files git tracks or would track), never in the
working tree; the copy's ``src/`` comes first on ``PYTHONPATH``, so the tests import the mutated
package. For each bug the tests named in its row run with ``-x``: "caught" means they failed
(pytest exit code 1) and names the first failing test. Each distinct test selection first runs
once without any bug, and must pass, or the row reports that instead of a catch.

The bugs are the audit's kinds (issue 30): the four the suite missed (a flipped guard, an
off-by-one, a dropped term on a path a compiled kernel shadows, a regression of ours hidden
behind a test of the reference package) and the kinds of the twelve before them (a reset rule,
a surrogate's constant, a recurrence term, a mask's diagonal, state not carried, units, a data
split that leaks, energy priced or counted wrong, a write that is not atomic, a running
statistic, a normalisation, a sampling cut). The compiled CPU kernels are built in a private
folder (``TORCH_EXTENSIONS_DIR``), so this never rebuilds the ones other checkouts share.

    python benchmarks/mutation_check.py --list            # the bugs, checked to apply
    python benchmarks/mutation_check.py --only guard,claim
    python benchmarks/mutation_check.py --markdown        # the table only (docs/results.md)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    key: str  # short name for --only
    bug: str  # the planted bug, in words
    file: str  # repository-relative
    edits: tuple[tuple[str, str], ...]  # (exact text, replacement); each text occurs once in the file
    tests: tuple[str, ...]  # pytest arguments: paths or node ids
    env: dict[str, str] = field(default_factory=dict)


NO_KERNELS = {"SPIKELM_NO_CPP_KERNELS": "1"}

MUTATIONS = (
    # --- the four the audit's suite missed (issue 30)
    Mutation("guard", "gradient-norm divergence guard flipped (fires only under the fp16 scaler)", "src/spikelm/train/loop.py",
             (("if not math.isfinite(gnorm) and not self.scaler.is_enabled():",
               "if not math.isfinite(gnorm) and self.scaler.is_enabled():"),),
             ("tests/train/test_guard.py",)),
    Mutation("claim", "io.claim_dir: a folder is non-empty only with more than one entry", "src/spikelm/io.py",
             (("    if p.is_dir() and _visible(p):", "    if p.is_dir() and len(_visible(p)) > 1:"),),
             ("tests/cli/test_outputs.py",)),
    Mutation("init-half", "mhse_decode's tensor-operation path drops init_half's +1/2", "src/spikelm/spiking/encoding.py",
             (("    if init_half:\n        q.add_(0.5)\n    q.floor_()  # q_T", "    q.floor_()  # q_T"),),
             ("tests/spiking",)),
    Mutation("init-half-nok", "the same, in the no-kernels leg (SPIKELM_NO_CPP_KERNELS=1)", "src/spikelm/spiking/encoding.py",
             (("    if init_half:\n        q.add_(0.5)\n    q.floor_()  # q_T", "    q.floor_()  # q_T"),),
             ("tests/spiking",), NO_KERNELS),
    Mutation("rwkv7-bf16", "RWKV-7: the WKV state carried between calls rounded to the model's dtype (bf16)",
             "src/spikelm/models/rwkv7.py",
             (("        return x, (att_shift, wkv_state, ffn_shift), v_first",
               "        return x, (att_shift, wkv_state.to(x.dtype), ffn_shift), v_first"),),
             ("tests/models/test_rwkv7.py",)),
    # --- kinds of the audit's twelve
    Mutation("if-reset", "IF neuron: hard reset to 0 instead of subtracting the threshold", "src/spikelm/spiking/neurons.py",
             (("        s = s.detach() if self.detach_reset else s\n        return u - self.threshold * s\n",
               "        s = s.detach() if self.detach_reset else s\n        return u * (1 - s)\n"),
              ("        return torch.where(fired, u - self.threshold, u)  # u - theta",
               "        return torch.where(fired, torch.zeros_like(u), u)  # u - theta")),
             ("tests/spiking/test_neurons.py",)),
    Mutation("lif-charge", "LIF: charge v + beta (x - v) replaced by the leaky-integrator beta v + x", "src/spikelm/spiking/neurons.py",
             (("        return v + self.beta * (x - (v - self.v_reset))", "        return self.beta * v + x"),),
             ("tests/spiking/test_neurons.py",)),
    Mutation("atan", "ArcTan surrogate: derivative off by a factor 2 (alpha instead of alpha / 2)",
             "src/spikelm/spiking/surrogate.py",
             (("        return (self.alpha / 2) / (1 + ((math.pi / 2) * self.alpha * x) ** 2)",
               "        return self.alpha / (1 + ((math.pi / 2) * self.alpha * x) ** 2)"),),
             ("tests/spiking/test_surrogate.py",)),
    Mutation("wkv6-bonus", "WKV6 naive reference: the bonus u of the current token dropped", "src/spikelm/ops/wkv6.py",
             (('        ys.append(torch.einsum("bhi,bhij->bhj", r_[:, t], u_ * a + S))  # (B, H, N)',
               '        ys.append(torch.einsum("bhi,bhij->bhj", r_[:, t], a + S))  # (B, H, N)'),),
             ("tests/ops/test_wkv6.py", "tests/models/test_rwkv6.py")),
    Mutation("wkv6-mask", "WKV6 chunked: the causal mask keeps the diagonal (the current token counted twice)",
             "src/spikelm/ops/wkv6.py",
             (("    causal = torch.ones(l, l, dtype=torch.bool, device=dev).tril(-1)",
               "    causal = torch.ones(l, l, dtype=torch.bool, device=dev).tril(0)"),),
             ("tests/ops/test_wkv6.py",)),
    Mutation("decay-floor", "WKV6 chunked: the log-decay floor dropped (no clamp before the cumulative sums)",
             "src/spikelm/ops/wkv6.py",
             (("    lw = to_chunks(logw.clamp(min=LOG_DECAY_FLOOR), f64).reshape(sub)",
               "    lw = to_chunks(logw, f64).reshape(sub)"),),
             ("tests/ops/test_wkv6.py", "tests/ops/test_wkv_precision.py")),
    Mutation("token-shift", "RWKV-6 token shift: a prefill ignores the carried previous token (zeros instead)",
             "src/spikelm/models/rwkv6.py",
             (("    return torch.cat((last.unsqueeze(1), x[:, :-1]), dim=1)",
               "    return torch.cat((torch.zeros_like(last).unsqueeze(1), x[:, :-1]), dim=1)"),),
             ("tests/models/test_rwkv6.py",)),
    Mutation("stream-state", "evaluation stream: the state is not carried from one chunk to the next",
             "src/spikelm/evaluate/stream.py",
             (("            logits, state = model(xb, state)\n            if last_only:",
               "            logits, state = model(xb, None)\n            if last_only:"),),
             ("tests/evaluate/test_perplexity.py",)),
    Mutation("bits", "perplexity: nats reported as bits (the division by ln 2 dropped)", "src/spikelm/evaluate/perplexity.py",
             (("    bits = nats / math.log(2)", "    bits = nats"),),
             ("tests/evaluate/test_perplexity.py",)),
    Mutation("split-leak", "text file split: train runs to the start of test (it holds the validation text)",
             "src/spikelm/data/sources.py",
             (('    bounds = {"train": (0, a), "valid": (a, b), "test": (b, size)}\n    return Plan(\n        name=f"text-',
               '    bounds = {"train": (0, b), "valid": (a, b), "test": (b, size)}\n    return Plan(\n        name=f"text-'),),
             ("tests/data/test_build.py",)),
    Mutation("ac-price", "energy: an accumulate priced as a multiply-accumulate", "src/spikelm/energy/constants.py",
             (('        if kind == "ac":\n            return self.e_ac', '        if kind == "ac":\n            return self.e_mac'),),
             ("tests/energy",)),
    Mutation("ac-count", "energy: a spike-driven layer charged one accumulate per input, not per spike",
             "src/spikelm/energy/counters.py",
             (('                row.add_spike_ops({"ac": int(st.spikes_per_layer_step.sum()) * m.out_features})',
               '                row.add_spike_ops({"ac": x.numel() * m.out_features})'),),
             ("tests/energy",)),
    Mutation("atomic", "io.atomic_write writes the target in place (no temporary sibling)", "src/spikelm/io.py",
             (("    tmp = temp_sibling(p)\n    try:\n        with open(tmp, \"wb\") as f:",
               "    tmp = p\n    try:\n        with open(tmp, \"wb\") as f:"),),
             ("tests/cli/test_outputs.py",)),
    Mutation("calib-max", "calibration: the running maximum keeps only the last batch", "src/spikelm/convert/calibrate.py",
             (("            st.max = m if st.max is None else torch.maximum(st.max, m)", "            st.max = m"),),
             ("tests/convert",)),
    Mutation("acc-norm", "multiple choice: acc_norm without the per-character normalisation",
             "src/spikelm/evaluate/multiple_choice.py",
             (("                    norm.append(float(_argmax([v / n for v, n in zip(ll, lens)]) == y))",
               "                    norm.append(float(_argmax(ll) == y))"),),
             ("tests/evaluate/test_multiple_choice.py",)),
    Mutation("ce-grad", "chunked fp32 cross-entropy: backward ignores the incoming gradient (the mean's 1/N)",
             "src/spikelm/ops/cross_entropy.py",
             (("  # softmax - onehot\n            grad[i : i + rows] = p.mul_(g)",
               "  # softmax - onehot\n            grad[i : i + rows] = p"),),
             ("tests/ops/test_cross_entropy.py",)),
    Mutation("top-p", "top-p sampling: the token that crosses the mass top_p is dropped too", "src/spikelm/generate.py",
             (("        drop = cum - sorted_p >= top_p", "        drop = cum >= top_p"),),
             ("tests/test_generate.py",)),
)


def copy_repository(dest: Path) -> None:
    """The files git tracks or would track (not .venv/, runs/, caches), copied to ``dest``."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def plant(copy: Path, m: Mutation) -> None:
    path = copy / m.file
    text = path.read_text()
    for old, new in m.edits:
        n = text.count(old)
        if n != 1:
            raise ValueError(f"{m.key}: the text to replace occurs {n} times in {m.file} (the code moved): {old[:80]!r}")
        text = text.replace(old, new)
    path.write_text(text)


def run_tests(copy: Path, tests: tuple[str, ...], env_extra: dict[str, str], ext_dir: Path) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=str(copy / "src"), OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(ext_dir),
               **env_extra)
    env.pop("PYTEST_ADDOPTS", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *tests],
                          cwd=copy, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    failed = re.findall(r"^FAILED (\S+)", out, flags=re.M)
    first = failed[0] if failed else (out.strip().splitlines() or [""])[-1][:160]
    return proc.returncode, first, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated keys of the bugs to plant (default: all)")
    ap.add_argument("--list", action="store_true", help="list the bugs and check that each still applies; run nothing")
    ap.add_argument("--markdown", action="store_true", help="print only the table (for docs/results.md)")
    args = ap.parse_args()
    keys = [k for k in args.only.split(",") if k]
    unknown = sorted(set(keys) - {m.key for m in MUTATIONS})
    if unknown:
        ap.error(f"unknown keys {', '.join(unknown)}; known: {', '.join(m.key for m in MUTATIONS)}")
    chosen = [m for m in MUTATIONS if not keys or m.key in keys]
    ext_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikelm" / "mutation-torch-extensions"
    log = (lambda *a: None) if args.markdown else print
    rows, bad = [], 0
    with tempfile.TemporaryDirectory(prefix="spikelm-mutants-") as tmp:
        clean = Path(tmp) / "clean"
        copy_repository(clean)
        for m in chosen:  # every edit must apply before anything runs
            scratch = Path(tmp) / "check"
            scratch.mkdir(exist_ok=True)
            (scratch / m.file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(clean / m.file, scratch / m.file)
            plant(scratch, m)
        if args.list:
            for m in chosen:
                print(f"{m.key:<14} {m.file:<42} {m.bug}")
            return 0
        log(f"python {sys.version.split()[0]}, {len(chosen)} planted bugs, tests with -x, one thread each; copy in {tmp}")
        baseline: dict[tuple, tuple[int, str, float]] = {}
        for m in chosen:
            sel = (m.tests, tuple(sorted(m.env.items())))
            if sel not in baseline:
                baseline[sel] = run_tests(clean, m.tests, m.env, ext_dir)
                rc, first, sec = baseline[sel]
                log(f"  without a bug: {' '.join(m.tests)} {dict(m.env) or ''} -> exit {rc} ({sec:.0f} s)")
            base_rc = baseline[sel][0]
            mutant = Path(tmp) / f"mutant-{m.key}"
            shutil.copytree(clean, mutant)
            plant(mutant, m)
            rc, first, sec = run_tests(mutant, m.tests, m.env, ext_dir)
            shutil.rmtree(mutant)
            if base_rc != 0:
                verdict = f"no verdict: the tests fail without the bug (exit {base_rc})"
            elif rc == 1:
                verdict = "caught"
            elif rc == 0:
                verdict = "NOT caught"
            else:
                verdict = f"no verdict: pytest exit {rc}"
            bad += verdict != "caught"
            rows.append((m, verdict, first if rc == 1 else "-", sec))
            log(f"  {m.key:<14} {verdict:<10} {sec:5.0f} s  {first if rc == 1 else ''}")
    env_note = lambda m: " (" + ", ".join(f"{k}={v}" for k, v in m.env.items()) + ")" if m.env else ""  # noqa: E731
    print("\n| # | planted bug | file | tests run | caught | first failing test |")
    print("|---:|---|---|---|---|---|")
    for i, (m, verdict, first, _sec) in enumerate(rows, 1):
        print(f"| {i} | {m.bug} | `{m.file}` | {', '.join(f'`{t}`' for t in m.tests)}{env_note(m)} | {verdict} | "
              f"{'`' + first + '`' if first != '-' else '-'} |")
    print(f"\n{len(rows) - bad} of {len(rows)} planted bugs caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
