"""A prepared corpus: token files (numpy memmaps) with a ``meta.json`` that says what they hold.

:func:`spikelm.data.build.prepare` turns a text source (:mod:`spikelm.data.sources`) into three
token files, ``train.bin``, ``valid.bin`` and ``test.bin``, under
``<cache>/corpora/<name>-<tokenizer tag>/``, next to the original text of each split
(``<split>.txt``, needed for bits-per-character and by evaluators that re-tokenize), a document
index (``<split>.docs.npy``) and ``meta.json``. :class:`Corpus` reads such a folder; training
samples windows straight from the memmaps (:mod:`spikelm.data.sampler`), so no corpus is ever held
in RAM.

Token files: ``uint16`` when the vocabulary fits (``vocab_size <= 65536``), else ``uint32``.
**Documents are separated by the tokenizer's ``eod_id``**, put *between* consecutive documents
(never before the first or after the last), so a single-document split such as an enwik8 split is
exactly its bytes.  Separators are counted in ``n_tokens`` but are not characters: ``n_chars`` is
the number of unicode characters of ``<split>.txt``, which is the exact concatenation of the
documents (so ``decode(tokens) == text`` for the byte tokenizer, whose decode drops the eod id);
the documents' boundaries are in ``<split>.docs.npy`` (one row per document: byte offset in the
text, token offset of its first token).  Bits per character = total bits over all predicted tokens
/ ``n_chars``; the separators add a negligible share (about one token in 12,000 for Brown).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .tokenizers import Tokenizer, load_tokenizer

__all__ = ["SPLITS", "SPLIT_ALIASES", "canonical_split", "cache_dir", "Corpus", "FORMAT_VERSION"]

FORMAT_VERSION = 1

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"validation": "valid", "val": "valid", "dev": "valid", "training": "train"}


def canonical_split(split: str) -> str:
    """A split name as the cache stores it: ``validation``, ``val`` and ``dev`` mean ``valid``."""
    return SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())


def cache_dir() -> Path:
    """Where corpora and downloads are kept: ``$SPIKELM_CACHE`` or ``~/.cache/spikelm``."""
    env = os.environ.get("SPIKELM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spikelm"


class Corpus:
    """A prepared corpus folder: token memmaps, original text and ``meta.json``.

    Opening it checks that every file is present and of the size ``meta.json`` records; with
    ``verify=True`` (the default) it also checks the sha256 checksums, so silently truncated or
    overwritten files are caught before a training run trusts them.
    """

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise DataError(f"{self.path}: no meta.json, so this is not a prepared corpus; run `spikelm data prepare SOURCE`")
        try:
            self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{meta_file}: unreadable ({e}); prepare the corpus again with --fresh") from None
        problem = _corpus_problem(self.path, self.meta, verify)
        if problem:
            raise DataError(f"{self.path}: {problem}; prepare it again (`spikelm data prepare SOURCE --fresh`)")
        self._tokenizer: Tokenizer | None = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.n_tokens(s):,}" for s in SPLITS)
        return f"Corpus({self.name!r}, tokenizer={self.meta['tokenizer']!r}, tokens: {sizes})"

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the token files were made with (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.meta["tokenizer_spec"])
        return self._tokenizer

    def _split(self, split: str) -> str:
        """The stored name of ``split`` (``validation``, ``val``, ``dev`` mean ``valid``); unknown names fail."""
        name = canonical_split(split)
        if name not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return name

    def _split_meta(self, split: str) -> dict[str, Any]:
        return self.meta["splits"][self._split(split)]

    def tokens(self, split: str) -> np.memmap:
        """The split's token ids as a read-only memmap (pages are read only when touched)."""
        return np.memmap(self.path / f"{self._split(split)}.bin", dtype=self.dtype, mode="r")

    def n_tokens(self, split: str) -> int:
        return int(self._split_meta(split)["n_tokens"])

    def n_chars(self, split: str) -> int:
        """Unicode characters of the split's text (bytes for byte-level sources such as enwik8)."""
        return int(self._split_meta(split)["n_chars"])

    def n_bytes(self, split: str) -> int:
        """UTF-8 bytes of the split's text."""
        return int(self._split_meta(split)["n_bytes"])

    def text_bytes(self, split: str) -> bytes:
        """The split's original text, as stored (exact bytes, even where enwik8 cuts a character)."""
        return (self.path / f"{self._split(split)}.txt").read_bytes()

    def text(self, split: str) -> str:
        """The split's original text; the concatenation of its documents, no separators added.

        Byte-level sources may start or end inside a UTF-8 character; those bytes decode to U+FFFD.
        """
        return self.text_bytes(split).decode("utf-8", errors="replace" if self.meta["byte_level"] else "strict")

    def doc_index(self, split: str) -> np.ndarray:
        """(n_docs, 2) int64: byte offset of each document in the text, offset of its first token."""
        return np.load(self.path / f"{self._split(split)}.docs.npy")

    def documents(self, split: str) -> list[str]:
        """The split's documents as strings (the text cut at the document boundaries)."""
        data = self.text_bytes(split)
        starts = [int(s) for s in self.doc_index(split)[:, 0]] + [len(data)]
        errors = "replace" if self.meta["byte_level"] else "strict"
        return [data[a:b].decode("utf-8", errors=errors) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _corpus_problem(path: Path, meta: dict[str, Any], verify: bool) -> str | None:
    """Why the corpus folder cannot be trusted, or None if it can."""
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in SPLITS:
            m = meta["splits"][split]
            for suffix, size in ((".bin", m["n_tokens"] * itemsize), (".txt", m["n_bytes"])):
                f = path / f"{split}{suffix}"
                if not f.is_file():
                    return f"{f.name} is missing"
                if f.stat().st_size != size:
                    return f"{f.name} has {f.stat().st_size:,} bytes, meta.json says {size:,}"
            if not (path / f"{split}.docs.npy").is_file():
                return f"{split}.docs.npy is missing"
            if verify:
                if sha256_file(path / f"{split}.bin") != m["sha256"]:
                    return f"{split}.bin does not match its sha256 checksum"
                if sha256_file(path / f"{split}.txt") != m["text_sha256"]:
                    return f"{split}.txt does not match its sha256 checksum"
    except (KeyError, TypeError) as e:
        return f"meta.json lacks {e}"
    return None
