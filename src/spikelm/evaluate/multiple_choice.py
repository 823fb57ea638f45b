"""Few-shot multiple-choice accuracy (ARC, PIQA, COPA, WinoGrande, HellaSwag) and LAMBADA.

Scoring is by log-likelihood, as in lm-evaluation-harness: each choice is a continuation of the
(few-shot + item) context, its score the sum of its tokens' log-probabilities.

* ``acc``: the choice with the highest summed log-probability is the prediction.
* ``acc_norm``: the same after dividing each sum by the choice's number of *characters*
  (the choice text without the separating space), the harness's length normalisation. Not
  reported for WinoGrande, whose scored continuation is the same string for both options.
* WinoGrande uses partial scoring: each option is substituted into the sentence before the
  blank, and only the words after the blank are scored (see :mod:`.tasks`).
* LAMBADA: ``acc`` is the fraction of passages whose last word is reproduced by greedy
  decoding (every target token is the arg-max given the previous ones); ``perplexity`` is
  ``exp(-mean log p(target))`` over passages, the harness's per-word definition.

Tokenization boundary. Whitespace at the end of a context moves to the front of its
continuation (the harness does the same), and every context is prefixed by the tokenizer's
end-of-document token (how RWKV models see a document start; an empty context then still has
a token to predict from). Context and continuation are then tokenized *separately* and
concatenated. The harness's HF models instead tokenize ``context + continuation`` whole and cut
at the length of the context's tokens; the two agree for the byte tokenizer and whenever no
token straddles the boundary -- with the RWKV World tokenizer, on every one of 4,101 requests
checked (the first 300 items of each built-in task, zero-shot). Separate tokenization makes the
context tokens identical for every choice, which is what lets the scorer share their
computation, and it is also what the harness adapter in :mod:`.harness` does, so both report
the same numbers.

Recurrent state reuse. A recurrent model reads a shared prefix once: the scorer runs the longest
common token prefix of an item's requests (the whole context for ordinary items, everything up
to the blank for WinoGrande) and continues every choice from a copy of the resulting state, so
only the choices' own tokens are run per choice. Batching: the prefixes of ``batch_size`` items
(sorted by length) run as one batch *without padding* -- padding would enter a recurrent
state -- by advancing all rows to the shortest length, releasing the rows that end there with
their states, and going on with the rest; the continuations then run as right-padded batches
(pads come after the real tokens, so they cannot affect them; their positions are masked out of
the sums). ``state_reuse=False`` scores every ``context + continuation`` from scratch instead,
as a transformer would; the two agree to float rounding (tests check 1e-5 in float64).
With 5-shot prompts state reuse feeds the model 3.5x fewer token positions on ARC and
HellaSwag, 1.6-1.9x fewer on PIQA, COPA and WinoGrande (two choices), and as many on LAMBADA.

State contract. ``logits, state = model(idx, state)`` with ``idx`` (B, T); the state is a
nested list / tuple / dict of tensors whose dimension 0 is the batch (RWKV: per layer, the token
shift vectors (B, C) and the WKV state (B, H, N, N)). :func:`expand_state`, :func:`select_state`,
:func:`concat_states` and :func:`clone_state` rely on that (and it is checked). A model's optional ``last_only=True``
keyword (logits of the last position only) is used when present, to skip the head elsewhere.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data.tokenizers import get_tokenizer
from ..errors import SpikelmError
from ..generate import accepts_last_only, sample_logits
from ..markdown import md_table
from ..progress import ProgressFn, report
from .state import State, check_batch, concat_states, select_state
from .stream import forward_chunks, model_device, nll_sum
from .tasks import DEFAULT_TASKS, Task, item_requests, load_task

__all__ = [
    "Scorer",
    "TaskScores",
    "score_task",
    "evaluate_tasks",
    "format_table2",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- scorer


def _upcast(logits: Tensor) -> Tensor:
    """Log-softmax in at least float32 (bf16 logits lose ~3 digits); float64 models stay float64."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


@dataclass
class _Row:
    """One request's tokens still to run after a shared prefix."""

    request: int  # index of the request in the caller's list
    inputs: list[int]  # tokens fed to the model
    targets: list[int]  # the token each input position must predict
    scored_from: int  # positions >= this one are continuation tokens (summed)


class Scorer:
    """Log-likelihoods of text continuations under a spikelm model.

    Args:
        model: a module obeying ``logits, state = model(idx, state)``.
        tokenizer: defaults to ``get_tokenizer(model.tokenizer_name)``.
        batch_size: rows (choices) per forward call.
        state_reuse: run each shared prefix once and continue the choices from copies of its
            state; False scores each request from scratch (slower; the reference).
        prefix_eod: prefix every context with the end-of-document token.
        max_logits: cap on ``batch * time * vocab`` logits per forward call; longer inputs are
            fed in time chunks that carry the recurrent state, bounding memory for large vocabularies.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any | None = None,
        *,
        batch_size: int = 16,
        state_reuse: bool = True,
        prefix_eod: bool = True,
        max_logits: int = 1 << 26,
    ) -> None:
        if tokenizer is None:
            tokenizer = get_tokenizer(getattr(model, "tokenizer_name", "bytes"))
        if batch_size < 1:
            raise SpikelmError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.state_reuse = state_reuse
        self.prefix_eod = prefix_eod
        self.max_logits = max_logits
        self.device = model_device(model)
        self._vocab = int(getattr(tokenizer, "vocab_size", 0)) or 65536

    # ---------------------------------------------------------------- tokenization

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens (trailing context whitespace moves to the continuation)."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        return self.encode_context(context), self.tokenizer.encode(continuation)

    def encode_context(self, context: str) -> list[int]:
        """Context tokens, after the end-of-document token (always, when the context is empty)."""
        ctx = self.tokenizer.encode(context) if context else []
        if self.prefix_eod or not ctx:
            ctx = [self.tokenizer.eod_id] + ctx
        return ctx

    # ---------------------------------------------------------------- model calls

    def _time_chunk(self, batch: int) -> int:
        return max(1, self.max_logits // max(1, batch * self._vocab))

    def _prefix_chunk(self, batch: int) -> int:
        """Time chunk of a prefix run, which needs only the last position's logits: a model with
        ``last_only`` computes no (batch, time, vocab) logits at all, so the bound is the hidden
        activations (batch * time * n_embd) under the same budget, not the vocabulary."""
        if not accepts_last_only(self.model):
            return self._time_chunk(batch)
        width = int(getattr(getattr(self.model, "cfg", None), "n_embd", 0)) or self._vocab
        return max(1, self.max_logits // max(1, batch * width))

    def _run_prefix(self, tokens: list[int]) -> tuple[Tensor, State]:
        """Feed one sequence; return its last position's log-probabilities (V,) and its state."""
        return self._run_prefixes([tokens])[0]

    def _score_rows(self, rows: Sequence[_Row], state: State) -> list[tuple[float, bool]]:
        """Sum the continuation log-probs of right-padded rows continuing ``state`` (None: fresh)."""
        B, L = len(rows), max(len(r.inputs) for r in rows)
        x = torch.zeros(B, L, dtype=torch.long)
        y = torch.zeros(B, L, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.bool)
        for b, r in enumerate(rows):
            n = len(r.inputs)
            x[b, :n] = torch.tensor(r.inputs)
            y[b, :n] = torch.tensor(r.targets)
            mask[b, r.scored_from : n] = True
        x, y, mask = x.to(self.device), y.to(self.device), mask.to(self.device)
        total = torch.zeros(B, dtype=torch.float64, device=self.device)
        greedy = torch.ones(B, dtype=torch.bool, device=self.device)
        for a, b, logits, state in forward_chunks(self.model, x, self._time_chunk(B), state, device=self.device):
            logits = _upcast(logits)  # (B, t, V)
            yt, mt = y[:, a:b], mask[:, a:b]
            logp = logits.gather(-1, yt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (B, t)
            total += torch.where(mt, logp, torch.zeros_like(logp)).double().sum(dim=1)
            greedy &= ~(mt & (logits.argmax(dim=-1) != yt)).any(dim=1)
        return list(zip(total.tolist(), greedy.tolist()))  # one transfer each, not one per row

    # ---------------------------------------------------------------- public API

    @torch.inference_mode()
    def loglikelihood(
        self,
        requests: Sequence[tuple[str, str]],
        groups: Sequence[Hashable] | None = None,
        progress: ProgressFn | None = None,
    ) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), greedy)`` for each ``(context, continuation)``.

        ``groups`` labels the requests whose shared prefix is computed once (by default requests
        with the same context string share); any grouping gives the same numbers, only speed.
        ``greedy`` says whether every continuation token is the model's arg-max.
        """
        self.model.eval()
        pairs = [self.encode_pair(c, k) for c, k in requests]
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        for i, (_, cont) in enumerate(pairs):
            if not cont:  # nothing to score
                out[i] = (0.0, True)
        todo = [i for i in range(len(pairs)) if out[i] is None]
        if self.state_reuse:
            self._loglikelihood_shared(pairs, todo, groups if groups is not None else [c for c, _ in requests], out, progress)
        else:
            self._loglikelihood_scratch(pairs, todo, out, progress)
        missing = [i for i, o in enumerate(out) if o is None]
        assert not missing, f"requests {missing[:5]} were not scored"
        return out  # type: ignore[return-value]

    def _loglikelihood_scratch(self, pairs, todo, out, progress) -> None:
        rows = []
        for i in todo:
            ctx, cont = pairs[i]
            seq = ctx + cont
            rows.append(_Row(i, seq[:-1], seq[1:], len(ctx) - 1))
        rows.sort(key=lambda r: -len(r.inputs))  # similar lengths together: less padding
        for a in range(0, len(rows), self.batch_size):
            report(progress, "scoring", a, len(rows), unit="row")
            chunk = rows[a : a + self.batch_size]
            for r, res in zip(chunk, self._score_rows(chunk, None)):
                out[r.request] = res

    def _loglikelihood_shared(self, pairs, todo, groups, out, progress) -> None:
        by_group: dict[Hashable, list[int]] = {}
        for i in todo:
            by_group.setdefault(groups[i], []).append(i)
        shared: list[tuple[list[int], list[list[int]], int]] = []  # (members, token sequences, prefix length)
        # A group of one request (LAMBADA, unconditioned requests) shares nothing: scored from
        # scratch, all such requests batched together (copying a state would only cost time).
        single: list[int] = []
        for members in by_group.values():
            if len(members) == 1:
                single.append(members[0])
                continue
            seqs = [pairs[i][0] + pairs[i][1] for i in members]
            # The shared run must stop before the first scored token of every member.
            p = min(_common_prefix_len(seqs), min(len(pairs[i][0]) for i in members))
            if p == 0:  # nothing shared (contexts differ from their first token): score from scratch
                self._loglikelihood_scratch(pairs, members, out, None)
            else:
                shared.append((members, seqs, p))
        if single:
            self._loglikelihood_scratch(pairs, single, out, None)
        shared.sort(key=lambda g: g[2])  # similar prefix lengths run together

        for a in range(0, len(shared), self.batch_size):
            report(progress, "scoring", a, len(shared), unit="item")
            batch = shared[a : a + self.batch_size]
            prefixes = self._run_prefixes([seqs[0][:p] for _, seqs, p in batch])
            rows: list[tuple[_Row, State]] = []  # each continuation with the state of its prefix
            for (members, seqs, p), (first_logp, state) in zip(batch, prefixes):
                toks = [seq[p] for seq in seqs]  # each predicted by the prefix's last position
                lps, best = first_logp[toks].tolist(), int(first_logp.argmax())  # two transfers per prefix
                for i, seq, tok, lp in zip(members, seqs, toks, lps):
                    n_ctx = len(pairs[i][0])
                    scored = p >= n_ctx
                    out[i] = (lp if scored else 0.0, (not scored) or best == tok)
                    if len(seq) - 1 > p:  # tokens left to feed: seq[p:-1] predicting seq[p+1:]
                        rows.append((_Row(i, seq[p:-1], seq[p + 1 :], max(0, n_ctx - p - 1)), state))
            rows.sort(key=lambda rs: len(rs[0].inputs))  # similar lengths together: less padding
            for c in range(0, len(rows), self.batch_size):
                chunk = rows[c : c + self.batch_size]
                state = concat_states([st for _, st in chunk])
                for (r, _), (lp, gr) in zip(chunk, self._score_rows([r for r, _ in chunk], state)):
                    prev_lp, prev_gr = out[r.request]  # the first token's share, scored from the prefix
                    out[r.request] = (prev_lp + lp, prev_gr and gr)
        report(progress, "scoring", len(shared), len(shared), unit="item", finished=True)

    def _run_prefixes(self, seqs: Sequence[list[int]]) -> list[tuple[Tensor, State]]:
        """Run several prefixes as one batch without padding; per prefix, (last log-probs, state).

        Padding would corrupt a recurrent state, so the rows advance together only as far as the
        shortest one; it then leaves the batch with its state, and the others go on (one call per
        distinct length, nearly all tokens in the first call when the lengths are similar).
        """
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        results: list[tuple[Tensor, State] | None] = [None] * len(seqs)
        state: State = None
        pos = 0
        while order:
            end = len(seqs[order[0]])
            x = torch.tensor([seqs[i][pos:end] for i in order], dtype=torch.long, device=self.device)
            for _, _, logits, state in forward_chunks(self.model, x, self._prefix_chunk(len(order)), state, last_only=True,
                                                      device=self.device):
                pass
            check_batch(state, len(order))
            keep = [j for j, i in enumerate(order) if len(seqs[i]) > end]
            for j, i in enumerate(order):
                if len(seqs[i]) == end:
                    results[i] = (torch.log_softmax(_upcast(logits[j, -1]), dim=-1), select_state(state, [j]))
            state = select_state(state, keep) if keep else None
            order = [order[j] for j in keep]
            pos = end
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def rolling_loglikelihood(self, text: str) -> tuple[float, int]:
        """``(sum log p(tokens), number of tokens)`` of a whole text after an end-of-document token.

        A recurrent model needs no sliding window: the text is fed in chunks carrying the state,
        so every token is predicted from the full preceding text.
        """
        self.model.eval()
        tokens = self.tokenizer.encode(text)
        if not tokens:
            return 0.0, 0
        seq = [self.tokenizer.eod_id] + tokens
        x = torch.tensor([seq[:-1]], dtype=torch.long)  # inputs seq[:-1] predict targets seq[1:]
        y = torch.tensor([seq[1:]], dtype=torch.long)
        nats, _ = nll_sum(self.model, x, y, self._time_chunk(1), device=self.device)
        return -float(nats[0]), len(tokens)

    @torch.inference_mode()
    def generate(
        self,
        context: str,
        until: Sequence[str] = (),
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> str:
        """Continue ``context`` greedily (``temperature <= 0``) or by sampling.

        Stops at the end-of-document token, after ``max_new_tokens``, or at the first of the
        ``until`` strings, which is cut off (the harness's ``generate_until`` contract).
        """
        self.model.eval()
        logp, state = self._run_prefix(self.encode_context(context))
        new: list[int] = []
        text = ""
        for _ in range(max_new_tokens):
            tok = sample_logits(logp.cpu(), temperature, top_k, top_p, generator)
            if tok == self.tokenizer.eod_id:
                break
            new.append(tok)
            text = self.tokenizer.decode(new)
            cuts = [text.find(s) for s in until if s and s in text]
            if cuts:
                return text[: min(cuts)]
            _, _, logits, state = next(forward_chunks(self.model, torch.tensor([[tok]]), 1, state, last_only=True,
                                                      device=self.device))
            logp = torch.log_softmax(_upcast(logits[0, -1]), dim=-1)
        return text


# --------------------------------------------------------------------------- tasks


@dataclass
class TaskScores:
    """Per-item scores of one task and the metrics computed from them."""

    task: Task
    n: int
    lls: list[list[float]]  # per item, per choice: sum log p(continuation)
    greedy: list[list[bool]]
    labels: list[int]
    seconds: float
    shots: int

    def metrics(self) -> dict[str, Any]:
        """``acc`` (+ stderr), ``acc_norm`` where meaningful, LAMBADA ``perplexity``; n, split, seconds."""
        t = self.task
        out: dict[str, Any] = {}
        if t.kind == "lambada":
            hits = [float(g[0]) for g in self.greedy]
            out["acc"] = _mean(hits)
            out["acc_stderr"] = _stderr(hits)
            out["perplexity"] = math.exp(-_mean([ll[0] for ll in self.lls])) if self.lls else float("nan")
        else:
            hits = [float(_argmax(ll) == y) for ll, y in zip(self.lls, self.labels)]
            out["acc"] = _mean(hits)
            out["acc_stderr"] = _stderr(hits)
            if t.has_acc_norm:
                norm = []
                for i, (ll, y) in enumerate(zip(self.lls, self.labels)):
                    lens = [max(1, len(c)) for c in t.items[i].choices]
                    norm.append(float(_argmax([v / n for v, n in zip(ll, lens)]) == y))
                out["acc_norm"] = _mean(norm)
                out["acc_norm_stderr"] = _stderr(norm)
        out.update(n=self.n, split=t.split, fewshot_split=t.fewshot_split, shots=self.shots, seconds=round(self.seconds, 3))
        return out


def _argmax(xs: Sequence[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # first index wins ties


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _stderr(xs: Sequence[float]) -> float:
    """Standard error of a mean of 0/1 outcomes (sample variance), as the harness reports it."""
    n = len(xs)
    if n < 2:
        return float("nan")
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def score_task(
    scorer: Scorer,
    task: Task,
    shots: int = 5,
    limit: int | None = None,
    seed: int = 1234,
    progress: ProgressFn | None = None,
) -> TaskScores:
    """Score the first ``limit`` items of ``task`` (all when None) with ``shots`` examples each."""
    t0 = time.perf_counter()
    n = len(task.items) if not limit else min(limit, len(task.items))
    shots_used = 0 if task.zero_shot else shots
    requests: list[tuple[str, str]] = []
    groups: list[int] = []
    for i in range(n):
        reqs = item_requests(task, i, shots_used, seed)
        requests.extend(reqs)
        groups.extend([i] * len(reqs))
    results = scorer.loglikelihood(requests, groups=groups, progress=progress)
    lls: list[list[float]] = [[] for _ in range(n)]
    greedy: list[list[bool]] = [[] for _ in range(n)]
    for g, (ll, gr) in zip(groups, results):
        lls[g].append(ll)
        greedy[g].append(gr)
    return TaskScores(task, n, lls, greedy, [it.label for it in task.items[:n]], time.perf_counter() - t0, shots_used)


def evaluate_tasks(
    model: nn.Module,
    tasks: Sequence[str] = DEFAULT_TASKS,
    shots: int = 5,
    limit: int | None = None,
    seed: int = 1234,
    batch_size: int = 16,
    *,
    state_reuse: bool = True,
    data_dir: str | None = None,
    tokenizer: Any | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, dict[str, Any]]:
    """Few-shot accuracy of ``model`` on each task spec (see :func:`.tasks.load_task`).

    Returns ``{task: {"acc", "acc_stderr", "acc_norm" (where meaningful), "perplexity"
    (LAMBADA), "n", "split", "fewshot_split", "shots", "seconds"}}``.
    """
    scorer = Scorer(model, tokenizer, batch_size=batch_size, state_reuse=state_reuse)
    results: dict[str, dict[str, Any]] = {}
    for spec in tasks:
        task = load_task(spec, data_dir=data_dir)
        scores = score_task(scorer, task, shots=shots, limit=limit, seed=seed, progress=progress)
        results[spec] = scores.metrics()
        m = results[spec]
        log.info("%s: acc %.2f%s (n=%d, %s split, %.1fs)", spec, 100 * m["acc"],
                 f", acc_norm {100 * m['acc_norm']:.2f}" if "acc_norm" in m else "", m["n"], m["split"], m["seconds"])
    return results


# --------------------------------------------------------------------------- reporting

_SHORT = {
    "arc_easy": "ARC-E",
    "arc_challenge": "ARC-C",
    "piqa": "PIQA",
    "copa": "COPA",
    "winogrande": "Wino",
    "hellaswag": "HellaSwag",
    "lambada": "LAMBADA",
}
_SPLIT_SHORT = {"validation": "val", "test": "test", "train": "train", "file": ""}


def _column(task: str, split: str) -> str:
    name = task.partition(":")[0]
    if name.startswith("xcopa_"):
        short = "XCOPA-" + name[len("xcopa_") :]
    else:
        short = _SHORT.get(name, os.path.basename(name).removesuffix(".jsonl"))
    s = _SPLIT_SHORT.get(split, split)
    return f"{short} {s}".strip()


def format_table2(rows: dict[str, dict[str, dict[str, Any]]], metric: str = "acc", digits: int = 2) -> str:
    """A markdown table in the layout of SpikeRWKV's Table 2: one row per model, one column per task.

    ``rows`` maps a row name (model / configuration) to the output of :func:`evaluate_tasks`.
    Cells are ``metric`` in percent (``acc_norm`` falls back to ``acc`` where it is not
    defined); a task a row lacks shows "–".
    """
    columns: dict[str, str] = {}  # task spec -> header, in order of first appearance
    for res in rows.values():
        for task, m in res.items():
            columns.setdefault(task, _column(task, str(m.get("split", ""))))
    body = []
    for name, res in rows.items():
        cells = []
        for task in columns:
            m = res.get(task)
            v = None if m is None else m.get(metric, m.get("acc"))
            cells.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}")
        body.append([name, *cells])
    return md_table(["Method", *columns.values()], body)
