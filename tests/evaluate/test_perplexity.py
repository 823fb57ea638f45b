"""Perplexity / BPC: equal to a plain token-by-token loop; chunking never changes the result."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch

from conftest import make_rwkv6
from spikelm.cli import main
from spikelm.cli.parser import _parse_docstring, build_parser
from spikelm.checkpoints import save
from spikelm.cli.measure import cmd_eval as cli_eval
from spikelm.evaluate.perplexity import evaluate_lm

EOD = 256  # the byte tokenizer's end-of-document id: the context of the first token


@pytest.fixture(scope="module")
def model():
    return make_rwkv6(n_layer=2, n_embd=32, head_size=16, seed=3)


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=123).astype(np.uint16)  # uint16, like a corpus memmap


@torch.no_grad()
def reference_nll_bits(model, tokens, ctx=0):
    """One token per call, log-softmax in float64; the state is reset every ``ctx`` tokens if ctx > 0."""
    inputs = [EOD] + [int(t) for t in tokens[:-1]]
    state, nats = None, 0.0
    for t, (x, y) in enumerate(zip(inputs, tokens)):
        if ctx and t % ctx == 0:
            state = None
        logits, state = model(torch.tensor([[x]]), state)
        nats -= float(torch.log_softmax(logits[0, -1].double(), -1)[int(y)])
    return nats / math.log(2)


def test_equals_token_by_token_reference(model, tokens):
    res = evaluate_lm(model, tokens, n_chars=150, chunk=64, progress=False)
    ref = reference_nll_bits(model, tokens)
    assert res["tokens"] == len(tokens) and res["chars"] == 150 and res["bos"] == EOD
    assert res["nll_bits"] == pytest.approx(ref, rel=1e-5)
    assert res["bpc"] == pytest.approx(ref / 150, rel=1e-5)
    assert res["ppl"] == pytest.approx(2 ** (ref / len(tokens)), rel=1e-5)
    assert res["tokens_per_second"] > 0


def test_one_piece_equals_chunks_with_carried_state(model, tokens):
    whole = evaluate_lm(model, tokens, 100, chunk=len(tokens), progress=False)["nll_bits"]
    for chunk in (7, 64):
        assert evaluate_lm(model, tokens, 100, chunk=chunk, progress=False)["nll_bits"] == pytest.approx(whole, rel=1e-5)
    # a plain list is accepted too
    assert evaluate_lm(model, tokens.tolist(), 100, chunk=50, progress=False)["nll_bits"] == pytest.approx(whole, rel=1e-5)


def test_fixed_windows_equal_an_explicit_window_loop(model, tokens):
    ctx = 40  # 123 tokens: three full windows and a last one of 3 tokens
    stream = evaluate_lm(model, tokens, 100, progress=False)
    windows = evaluate_lm(model, tokens, 100, ctx=ctx, batch_size=2, chunk=16, progress=False)
    ref = reference_nll_bits(model, tokens, ctx=ctx)
    assert windows["nll_bits"] == pytest.approx(ref, rel=1e-5)
    assert windows["tokens"] == stream["tokens"] == len(tokens)
    # resetting the state loses context: a different loss than the one stream (by far more than the tolerance)
    assert abs(windows["nll_bits"] - stream["nll_bits"]) > 20 * 1e-5 * stream["nll_bits"]
    assert "windows of 40" in windows["mode"]


def test_bad_inputs(model):
    from spikelm.errors import DataError

    with pytest.raises(DataError, match="no tokens"):
        evaluate_lm(model, [], 10, progress=False)
    with pytest.raises(DataError, match="n_chars"):
        evaluate_lm(model, [1, 2], 0, progress=False)


def test_help_documents_every_option():
    parser, _ = build_parser("eval", cli_eval)
    text = parser.format_help()
    _, helps = _parse_docstring(cli_eval.__doc__)
    by_dest = {a.dest: a for a in parser._actions}
    for name in inspect.signature(cli_eval).parameters:
        flag = name if name == "ckpt" else "--" + name.rstrip("_").replace("_", "-")
        assert flag in text, f"{flag} missing from --help"
        assert helps.get(name), f"no docstring help for {name}"
        # the parameter's own help (not a neighbour's) is attached to it
        assert by_dest[name].help and by_dest[name].help.startswith(helps[name]), f"{name}: help {by_dest[name].help!r}"


def test_cli_on_a_text_file(model, tmp_path, capsys):
    ckpt = save(model, tmp_path / "m")
    text = "Bits per character of a small text, with a non-ASCII character: caf\u00e9.\n" * 3
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    assert main(["eval", str(ckpt), "--data", str(tmp_path / "t.txt"), "--whole-file", "--json", "--no-progress", "--chunk", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    raw = text.encode("utf-8")
    assert out["bpc_unit"] == "byte" and out["tokens"] == len(raw) and out["chars"] == len(raw)
    direct = evaluate_lm(model, list(raw), len(raw), progress=False)
    assert out["bpc"] == pytest.approx(direct["bpc"], rel=1e-5)
    # --ctx gives the window mode, --max-chars a prefix
    assert main(["eval", str(ckpt), "--data", str(tmp_path / "t.txt"), "--whole-file", "--json", "--no-progress", "--ctx", "16", "--max-chars", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 20 and "windows of 16" in out["mode"]


def test_cli_on_a_corpus_split(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPIKELM_CACHE", str(tmp_path / "cache"))
    lines = [f"Line {i}: the quick brown fox jumps over {i % 7} lazy dogs." for i in range(300)]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    ckpt = save(model, tmp_path / "m")
    from spikelm.data.build import prepare

    corpus = prepare(f"text:{tmp_path / 'c.txt'}")
    args = ["eval", str(ckpt), "--data", f"text:{tmp_path / 'c.txt'}", "--split", "valid", "--json", "--no-progress"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["tokens"] == corpus.n_tokens("valid") and full["chars"] == corpus.n_bytes("valid")
    expected = evaluate_lm(model, corpus.tokens("valid"), corpus.n_bytes("valid"), progress=False)
    assert full["nll_bits"] == pytest.approx(expected["nll_bits"], rel=1e-6)
    # a --max-chars larger than the split re-tokenizes the text and gives the same numbers
    assert main(args + ["--max-chars", "100000000"]) == 0
    assert json.loads(capsys.readouterr().out)["nll_bits"] == pytest.approx(full["nll_bits"], rel=1e-5)
