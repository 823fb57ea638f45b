"""Tokenizers: byte-level (character models), RWKV World (greedy longest match), GPT-NeoX BPE.

Every tokenizer has ``name``, ``vocab_size``, ``eod_id``, ``encode(str) -> list[int]``,
``decode(list[int]) -> str`` and ``decode_bytes(list[int]) -> bytes`` (generation streams bytes,
since a token may end inside a UTF-8 character).  ``get_tokenizer(name)`` is the one front door;
``name`` is always something ``get_tokenizer`` accepts, so it can be stored in a model config.

RWKV World tokenization
-----------------------
The World vocabulary is 65529 byte strings; a text is tokenized by *greedy longest match* over
its UTF-8 bytes: at each position take the longest vocabulary entry that is a prefix of the rest.
A pure-Python trie walk does that at about 1-2 MB/s, too slow for a 100 MB corpus.  We keep that
trie walk as the naive twin (:meth:`WorldTokenizer.encode_bytes_naive`) and encode with a
*trie-shaped regular expression* run by the C regex engine of the standard library:

* every trie node becomes ``(?:a<child a>|b<child b>|...)``, with an extra empty alternative
  ``|)`` when the node itself ends a token;
* at most one alternative can match (they start with different bytes), and a group tries its
  children before the empty alternative, so the match descends as deep as the text allows and
  backtracks to the deepest node that ends a token: exactly the longest vocabulary prefix;
* every single byte is a token (checked on load), so ``findall`` matches back to back with no gaps
  and yields the greedy tokenization.  Tests compare it with the ``rwkv`` package's trie.

Alternatives measured and rejected (benchmarks/tokenizer_speed.py prints the numbers):
``tokenizers``' WordPiece is greedy longest-match-first but, in tokenizers 0.23, tries every end
position of a word from the longest down, so it is quadratic in the word length (an unsplit
text of kilobytes takes seconds), and the text cannot be pre-split without changing the result.
Making every token an ``AddedToken`` is exact (its Aho-Corasick matcher is leftmost-longest) but
builds a string slice per token: several times slower than the regex, even with ``encode_batch``
on both cores. The regex encoder is faster than the ``rwkv`` package's trie (docs/results.md,
"Tokenizer speed"), and needs no dependency.

Long inputs are encoded in pieces of ``chunk_bytes`` that provably give the same ids as one pass:
the match at position ``q`` only looks at bytes ``q .. q + max_token_len``, so the tokens of a
piece that start at or before ``piece_end - max_token_len`` are those of the whole text, and the
first token after them starts at a true token boundary, where the next piece begins.  No property
of the vocabulary (such as "no token crosses a newline", which is false for World) is needed.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ..errors import DataError, TokenizerError
from .charvocab import CHAR_PREFIX, CHAR_VOCAB_FILE, CharTokenizer, is_char_vocab, read_char_vocab

__all__ = [
    "Tokenizer",
    "ByteTokenizer",
    "WorldTokenizer",
    "NeoXTokenizer",
    "get_tokenizer",
    "load_tokenizer",
    "TokenizerError",
    "CharTokenizer",  # re-exported from .charvocab with its helpers
    "CHAR_PREFIX",
    "CHAR_VOCAB_FILE",
    "is_char_vocab",
    "read_char_vocab",
    "find_world_vocab",
    "WORLD_VOCAB_FILE",
    "WORLD_VOCAB_ENV",
]

log = logging.getLogger(__name__)

WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"
WORLD_VOCAB_ENV = "SPIKELM_WORLD_VOCAB"


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eod_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def decode_bytes(self, ids: list[int]) -> bytes: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus specials: 256 = end of document.

    Bits-per-character of a byte model is bits per byte of the UTF-8 text (the enwik8 convention).
    """

    name = "bytes"
    vocab_size = 257
    eod_id = 256

    def encode(self, text: str) -> list[int]:
        # surrogateescape: bytes that were not UTF-8 where the text came from (a command-line
        # argument, a file name) reach Python as U+DC80..U+DCFF; they encode back to those bytes.
        try:
            return list(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"the text holds {text[e.start]!r} at character {e.start}, a lone surrogate that no UTF-8 "
                "byte sequence encodes; pass valid text"
            ) from None

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(i for i in ids if 0 <= i < 256)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------------
# RWKV World
# ------------------------------------------------------------------------------------------------


def find_world_vocab(vocab_path: str | os.PathLike[str] | None = None) -> Path:
    """Locate the World vocabulary: ``vocab_path``, else ``$SPIKELM_WORLD_VOCAB``, else the copy
    that the ``rwkv`` package ships.

    The ``rwkv`` package is found with ``importlib.util.find_spec`` and never imported: importing
    it pulls in its model code (and torch JIT settings) only to read one text file.
    """
    if vocab_path is not None:
        path = Path(vocab_path)
        if not path.is_file():
            raise TokenizerError(f"RWKV World vocabulary {str(path)!r} does not exist (expected a file like "
                            f"{WORLD_VOCAB_FILE})")
        return path
    env = os.environ.get(WORLD_VOCAB_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise TokenizerError(f"${WORLD_VOCAB_ENV} points to {env!r}, which is not a file")
        return path
    spec = importlib.util.find_spec("rwkv")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / WORLD_VOCAB_FILE
        if path.is_file():
            return path
    raise TokenizerError(f"RWKV World vocabulary {WORLD_VOCAB_FILE} not found: `pip install rwkv` (it ships "
                    f"the file), set ${WORLD_VOCAB_ENV}, or pass the path of the vocabulary file")


def _parse_world_vocab(path: Path) -> dict[int, bytes]:
    """Read ``<id> <python str or bytes literal> <byte length>`` lines into ``{id: bytes}``.

    Literals go through ``ast.literal_eval`` (never ``eval``: a vocabulary file is data).  str
    entries stand for their UTF-8 bytes; the declared length is checked because a wrong length
    means the file was re-encoded or truncated, and a silently wrong vocabulary would only show
    up later as a bad perplexity.
    """
    vocab: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                first, last = line.index(" "), line.rindex(" ")
                idx = int(line[:first])
                declared = int(line[last + 1:])
                value = ast.literal_eval(line[first + 1:last])
            except (ValueError, SyntaxError) as e:
                raise TokenizerError(f"{where}: expected '<id> <str or bytes literal> <length>', "
                                     f"got {line[:80]!r}") from e
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, bytes) or not value:
                raise TokenizerError(f"{where}: token must be a non-empty str or bytes literal")
            if len(value) != declared:
                raise TokenizerError(f"{where}: token is {len(value)} bytes long, the file says {declared}")
            if idx < 1:
                raise TokenizerError(f"{where}: id {idx} is reserved (0 = end of document)")
            if idx in vocab:
                raise TokenizerError(f"{where}: id {idx} appears twice")
            if value in seen:
                raise TokenizerError(f"{where}: token {value!r} already has id {seen[value]}")
            vocab[idx] = value
            seen[value] = idx
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        # Without every single byte some texts could not be encoded, and the regex encoder would
        # silently skip the bytes it cannot match.
        raise TokenizerError(f"{path}: the vocabulary lacks {len(missing)} single-byte tokens "
                        f"(e.g. {bytes(missing[:4])!r}); every byte must be a token")
    return vocab


# Root alternatives are tried in this order first: the bytes most tokens of English-like text
# start with.  Correctness does not depend on the order (alternatives start with different bytes);
# speed does, since the regex engine scans a group's alternatives one by one.
_ROOT_FIRST = b" etaonisrhldcumfpgwybvkxjqz\n.,"


def _trie_regex(tokens: list[bytes]) -> bytes:
    """Build the trie-shaped pattern (see the module docstring) from the sorted token list.

    In sorted order the tokens under one trie node are a contiguous run, so the trie is walked
    as ranges ``tokens[lo:hi]`` that share their first ``depth`` bytes, without building nodes.
    Below the root, children are ordered by how many tokens they hold: a data-free proxy for how
    often the prefix occurs (the vocabulary was built from frequent strings).
    """

    def node(lo: int, hi: int, depth: int) -> bytes:
        terminal = len(tokens[lo]) == depth  # a prefix sorts before its extensions
        if terminal:
            lo += 1
        children: list[tuple[int, int, int]] = []  # (byte, lo, hi)
        i = lo
        while i < hi:
            b, j = tokens[i][depth], i + 1
            while j < hi and tokens[j][depth] == b:
                j += 1
            children.append((b, i, j))
            i = j
        if depth == 0:
            children.sort(key=lambda c: (_ROOT_FIRST.index(c[0]), 0) if c[0] in _ROOT_FIRST
                          else (len(_ROOT_FIRST), c[1] - c[2]))
        else:
            children.sort(key=lambda c: c[1] - c[2])
        alts = [re.escape(bytes([b])) + node(i, j, depth + 1) for b, i, j in children]
        if terminal:
            alts.append(b"")  # tried last: stop here only if no longer token matches
        if not alts:
            return b""
        if len(alts) == 1:
            return alts[0]
        return b"(?:" + b"|".join(alts) + b")"

    return node(0, len(tokens), 0)


_TERMINAL = 256  # key of a trie node's token id in the naive trie (byte keys are 0..255)


class WorldTokenizer:
    """RWKV World tokenizer: greedy longest match over the bytes of ``rwkv_vocab_v20230424.txt``.

    ``decode(encode(s)) == s`` for every str ``s``, lone surrogates included: text is encoded with
    ``surrogatepass`` (the bytes of a surrogate are still bytes the vocabulary covers).  Only ids
    that do not form UTF-8, such as a generation cut inside a character, decode with U+FFFD.

    Args:
        vocab_path: vocabulary file; default ``$SPIKELM_WORLD_VOCAB`` or the ``rwkv`` package's.
        vocab_size: rows of the embedding the ids index (65536 for World models; ids 65530..65535
            are unused and decode to nothing, like the end-of-document id 0).
        chunk_bytes: encode long inputs this many bytes at a time (bounds the temporary lists).
    """

    eod_id = 0

    def __init__(self, vocab_path: str | os.PathLike[str] | None = None, vocab_size: int = 65536,
                 chunk_bytes: int = 1 << 20) -> None:
        t0 = time.perf_counter()
        self.path = find_world_vocab(vocab_path)
        self.name = "world" if vocab_path is None else str(self.path)
        vocab = _parse_world_vocab(self.path)
        if max(vocab) >= vocab_size:
            raise TokenizerError(f"{self.path}: id {max(vocab)} does not fit vocab_size={vocab_size}")
        self.vocab_size = vocab_size
        self.max_token_len = max(len(t) for t in vocab.values())
        self.chunk_bytes = max(int(chunk_bytes), 4 * self.max_token_len)
        self._id_to_bytes: list[bytes] = [b""] * vocab_size
        for idx, tok in vocab.items():
            self._id_to_bytes[idx] = tok
        self._token_len = [len(t) for t in self._id_to_bytes]
        self._bytes_to_id: dict[bytes, int] = {tok: idx for idx, tok in vocab.items()}
        self._trie: dict[int, dict] | None = None  # naive twin's trie, built on first use
        self._regex: re.Pattern[bytes] | None
        try:
            self._regex = re.compile(_trie_regex(sorted(self._bytes_to_id)))
        except (RecursionError, re.error, OverflowError, MemoryError) as e:  # e.g. absurdly long tokens
            log.warning("cannot compile the World vocabulary into a regex (%s); falling back to the "
                        "pure-Python trie, which is several times slower", e)
            self._regex = None
        self._fast = _fast_world(self.path)
        log.debug("loaded %d World tokens from %s in %.2f s (fast path: %s)", len(vocab), self.path,
                  time.perf_counter() - t0, "pyrwkv-tokenizer" if self._fast is not None else "none")

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (its UTF-8 bytes, surrogates passed through).

        With the optional ``pyrwkv-tokenizer`` installed (``pip install spikelm[fast]``), valid
        text is encoded by its Rust implementation of the same greedy longest match (several times
        faster; identical ids, tested); text with lone surrogates, which is not valid UTF-8, and
        bytes (:meth:`encode_bytes`) go through spikelm's own matcher, the reference.
        """
        if self._fast is not None:
            try:
                text.encode("utf-8")  # lone surrogates: not UTF-8, the Rust side cannot take them
            except UnicodeEncodeError:
                pass
            else:
                return list(self._fast.encode(text))
        return self.encode_bytes(text.encode("utf-8", "surrogatepass"))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of arbitrary bytes, e.g. a fragment that is not valid UTF-8."""
        out: list[int] = []
        for ids in self.iter_encode(data):
            out.extend(ids)
        return out

    def encode_bytes_naive(self, data: bytes) -> list[int]:
        """Same as :meth:`encode_bytes` by a plain trie walk: the reference the fast path is tested
        against, and the fallback when the regex cannot be built."""
        out: list[int] = []
        for ids in self._iter_pieces(bytes(data), self._match_trie):
            out.extend(ids)
        return out

    def iter_encode(self, data: str | bytes) -> Iterator[list[int]]:
        """Yield the ids of ``data`` piece by piece (about ``chunk_bytes`` bytes each).

        Concatenated, the pieces are exactly ``encode_bytes(data)``; use this to write a large
        corpus to a token file without holding every id in one Python list (25 M ints ~ 1 GB).
        """
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        return self._iter_pieces(bytes(data), self._match_regex if self._regex is not None else self._match_trie)

    def _iter_pieces(self, data: bytes, match: Callable[[bytes, int, int], list[int]]) -> Iterator[list[int]]:
        """Run ``match(data, start, end)`` over pieces, re-synchronising at true token boundaries.

        ``match`` tokenizes ``data[start:end]`` as if the text ended at ``end``.  Tokens starting
        at or before ``end - max_token_len`` saw every candidate the whole text offers, so they are
        final; the next piece starts where the first later token started (module docstring).
        """
        n, start = len(data), 0
        while start < n:
            end = min(start + self.chunk_bytes, n)
            ids = match(data, start, end)
            if end < n:
                limit, cut, pos = end - self.max_token_len, len(ids), end
                while cut > 0 and pos - self._token_len[ids[cut - 1]] > limit:
                    cut -= 1
                    pos -= self._token_len[ids[cut]]
                del ids[cut:]
                end = pos
            yield ids
            start = end

    def _match_regex(self, data: bytes, start: int, end: int) -> list[int]:
        assert self._regex is not None
        return list(map(self._bytes_to_id.__getitem__, self._regex.findall(data, start, end)))

    def _build_trie(self) -> dict[int, dict]:
        root: dict[int, dict] = {}
        for tok, idx in self._bytes_to_id.items():
            node = root
            for b in tok:
                node = node.setdefault(b, {})
            node[_TERMINAL] = idx  # type: ignore[assignment]
        return root

    def _match_trie(self, data: bytes, start: int, end: int) -> list[int]:
        if self._trie is None:
            self._trie = self._build_trie()
        root, ids, i = self._trie, [], start
        while i < end:
            node, j, best, best_end = root, i, -1, i
            while j < end:
                node = node.get(data[j])  # type: ignore[assignment]
                if node is None:
                    break
                j += 1
                tid = node.get(_TERMINAL)
                if tid is not None:
                    best, best_end = tid, j  # type: ignore[assignment]
            ids.append(best)  # never -1: every single byte is a token (checked on load)
            i = best_end
        return ids

    # -- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids: list[int]) -> bytes:
        """Concatenated token bytes; end of document and unused ids give nothing."""
        table = self._id_to_bytes
        if min(ids, default=0) >= 0:  # a negative index would silently wrap around
            try:
                return b"".join([table[i] for i in ids])
            except IndexError:
                pass
        bad = next(i for i in ids if not 0 <= i < self.vocab_size)
        raise ValueError(f"token id {bad!r} is outside 0..{self.vocab_size - 1}")

    def decode(self, ids: list[int]) -> str:
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:  # ids cut inside a character: no str encodes to these bytes
            return data.decode("utf-8", "replace")

    def token_bytes(self, idx: int) -> bytes:
        """The bytes of one token (b'' for end of document and unused ids)."""
        return self._id_to_bytes[idx]


# ------------------------------------------------------------------------------------------------
# GPT-NeoX BPE (tokenizers library)
# ------------------------------------------------------------------------------------------------


def _byte_level_alphabet() -> dict[str, int]:
    """Inverse of the byte -> printable character map of byte-level BPE (GPT-2, GPT-NeoX).

    Byte-level BPE stores each byte as one visible character so that token strings contain no
    control characters or spaces: bytes that are already printable Latin-1 characters stand for
    themselves, the other bytes take the characters U+0100, U+0101, ... in increasing byte order.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class NeoXTokenizer:
    """A ``tokenizer.json`` (GPT-NeoX BPE or any other) through the ``tokenizers`` library.

    Note that GPT-NeoX normalizes text to NFC, so ``decode(encode(s)) == s`` only for NFC text,
    and that the library maps the literal text ``<|endoftext|>`` to the end-of-document id.
    Special tokens (end of document, padding) decode to nothing, as in :class:`ByteTokenizer`.
    """

    def __init__(self, tokenizer_json_path: str | os.PathLike[str], eod_token: str = "<|endoftext|>") -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as e:
            raise TokenizerError("GPT-NeoX tokenizers need the `tokenizers` package: "
                                 "pip install 'spikelm[neox]'") from e
        path = Path(tokenizer_json_path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {str(path)!r} does not exist")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the library raises its own Exception subclass for bad JSON
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from e
        self.name = str(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eod = self._tok.token_to_id(eod_token)
        if eod is None:
            raise TokenizerError(f"{path}: no end-of-document token {eod_token!r}; pass eod_token=")
        self.eod_id = eod
        added = self._tok.get_added_tokens_decoder()
        self._special = {i for i, t in added.items() if t.special}
        self._added = {i: t.content.encode("utf-8") for i, t in added.items() if not t.special}
        # Byte-level models store bytes as characters; map them back so that decode_bytes can
        # return a token that ends inside a UTF-8 character.  Other models decode per token.
        decoder = self._tok.decoder
        self._alphabet = _byte_level_alphabet() if type(decoder).__name__ == "ByteLevel" else None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def decode_bytes(self, ids: list[int]) -> bytes:
        if self._alphabet is None:
            return self.decode(ids).encode("utf-8")
        out = bytearray()
        for i in ids:
            if i in self._special:
                continue
            if i in self._added:
                out += self._added[i]
                continue
            piece = self._tok.id_to_token(i)
            if piece is None:
                raise ValueError(f"token id {i!r} is outside 0..{self.vocab_size - 1}")
            out += bytes(self._alphabet[c] for c in piece)
        return bytes(out)


# ------------------------------------------------------------------------------------------------
# Front door
# ------------------------------------------------------------------------------------------------


def _fast_world(path: Path) -> Any:
    """The ``pyrwkv_tokenizer`` encoder, or None when the optional package is absent or ``path`` does
    not hold the World vocabulary it ships (its Rust reader assumes that file: a custom vocabulary can
    make it abort, so custom files always use spikelm's own matcher)."""
    if os.environ.get("SPIKELM_NO_FAST_TOKENIZER"):
        return None
    try:
        import pyrwkv_tokenizer  # optional (extra "fast"): a Rust World tokenizer
    except ImportError:
        return None
    bundled = Path(pyrwkv_tokenizer.__file__).parent / "rwkv_vocab_v20230424.txt"
    try:
        # the same vocabulary, whatever the line endings (the rwkv package's copy has CRLF)
        same = bundled.read_bytes().replace(b"\r\n", b"\n") == path.read_bytes().replace(b"\r\n", b"\n")
    except OSError:
        same = False
    if not same:
        return None
    try:
        return pyrwkv_tokenizer.WorldTokenizer(str(bundled))
    except Exception as e:  # the extension raises its own types
        log.debug("pyrwkv-tokenizer failed to load (%s); using spikelm's own matcher", e)
        return None


@functools.lru_cache(maxsize=8)
def _world(path: Path, name: str) -> WorldTokenizer:
    # Loading parses 65k literals and compiles the regex (seconds): share one instance per file.
    tok = WorldTokenizer(path)
    tok.name = name
    return tok


@functools.lru_cache(maxsize=8)
def _neox(path: Path) -> NeoXTokenizer:
    return NeoXTokenizer(path)


def get_tokenizer(name: str) -> Tokenizer:
    """``bytes``, ``world`` (RWKV World vocab), or a path to a ``tokenizer.json`` (GPT-NeoX BPE) or to
    a World-format vocabulary ``.txt``.  World and NeoX tokenizers are cached per file."""
    if name == "bytes":
        return ByteTokenizer()
    if name == "world":
        return _world(find_world_vocab().resolve(), "world")
    if name.startswith("char:"):  # character-vocabulary SpikeGPT: id -> character map (vocab.json)
        return CharTokenizer(name[len(CHAR_PREFIX):])
    path = Path(name)
    if path.suffix in (".json", ".txt"):
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {name!r} does not exist")
        if path.suffix == ".json":
            return _neox(path.resolve())
        return _world(path.resolve(), name)
    raise TokenizerError(f"unknown tokenizer {name!r}; use 'bytes', 'world', a tokenizer.json or a World vocab .txt")


def load_tokenizer(spec: str) -> Tokenizer:
    """:func:`get_tokenizer` with every failure (a missing or unreadable file) as a ``DataError``."""
    try:
        return get_tokenizer(spec)
    except (ValueError, OSError) as e:
        raise DataError(f"tokenizer {spec!r}: {e}") from None
