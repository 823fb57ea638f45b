"""Few-shot scoring with and without reuse of the shared context's recurrent state, in one run.

With reuse (spikelm's default) the few-shot context of an item is run once and its recurrent
state is copied to every choice; without it each choice is scored from the first token. The
accuracies must be identical (the script checks); the ratio of the times is the speed-up.

    python benchmarks/nlu_state_reuse.py CHECKPOINT [--shots 5 --limit 50 --tasks arc_easy,...]
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    from spikelm.evaluate.tasks import DEFAULT_TASKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--encoding", default="", help="spiking preset to apply first ('' = the model as loaded)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, dtype {str(torch.get_default_dtype()).replace('torch.', '')}")

    import spikelm
    from spikelm.evaluate.multiple_choice import evaluate_tasks
    from spikelm.evaluate.variants import apply_encoding

    model = apply_encoding(spikelm.load(a.checkpoint), a.encoding)
    tasks = [t for t in a.tasks.split(",") if t]
    runs = {reuse: evaluate_tasks(model, tasks, shots=a.shots, limit=a.limit, state_reuse=reuse) for reuse in (True, False)}
    print(f"{a.checkpoint}{' [' + a.encoding + ']' if a.encoding else ''}: {a.shots}-shot, first {a.limit} items per task")
    print(f"{'task':15s} {'acc %':>6s} {'reuse s':>8s} {'no reuse s':>10s} {'speed-up':>8s}")
    tot = {True: 0.0, False: 0.0}
    for t in tasks:
        r, n = runs[True][t], runs[False][t]
        if r["acc"] != n["acc"] or r.get("acc_norm") != n.get("acc_norm"):
            raise SystemExit(f"{t}: accuracies differ with and without state reuse: {r['acc']} vs {n['acc']}")
        tot[True] += r["seconds"]
        tot[False] += n["seconds"]
        print(f"{t:15s} {100 * r['acc']:6.2f} {r['seconds']:8.1f} {n['seconds']:10.1f} {n['seconds'] / r['seconds']:7.2f}x")
    print(f"{'all':15s} {'':6s} {tot[True]:8.1f} {tot[False]:10.1f} {tot[False] / tot[True]:7.2f}x  (same accuracies)")


if __name__ == "__main__":
    main()
