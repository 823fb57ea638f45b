"""Building token files: tokenize a source's splits into a corpus folder, once, atomically.

Large inputs are tokenized in pieces that end at a line break followed by a non-space character,
so memory stays bounded; for the byte tokenizer this is exact, for subword tokenizers a token can
never span such a break (a negligible difference from tokenizing the whole text at once).

Everything is written into a temporary folder beside the target and renamed into place at the end,
``meta.json`` last, so a crash never leaves a corpus that claims to be complete; a cached corpus is
reused only if its meta, sizes, source fingerprint and sha256 checksums all match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..io import atomic_write_json
from ..progress import ProgressFn, report
from .corpus import FORMAT_VERSION, SPLITS, Corpus, cache_dir, sha256_file
from .sources import ENWIK8_SPLIT, Piece, Plan, enwik8_plan, resolve, safe_name, unique
from .tokenizers import Tokenizer, load_tokenizer

__all__ = ["prepare", "prepare_enwik8", "corpus_path", "unigram_entropy"]

logger = logging.getLogger("spikelm.data")

def _tokenizer_tag(spec: str) -> str:
    """Folder-name tag of a tokenizer: its name, or for a file the stem plus a content hash."""
    p = Path(spec).expanduser()
    if p.is_file():
        return f"{safe_name(p.stem)}-{sha256_file(p)[:8]}"
    return safe_name(spec)


class _SplitWriter:
    """Streams one split's documents into ``<split>.bin``, ``<split>.txt`` and the doc index."""

    def __init__(self, folder: Path, split: str, tok: Tokenizer, dtype: np.dtype, byte_level: bool, progress: ProgressFn | None, total: int | None) -> None:
        self.folder, self.split, self.tok, self.dtype, self.byte_level = folder, split, tok, dtype, byte_level
        self.progress, self.total, self.desc = progress, total, f"prepare {folder.name.split('.tmp')[0].lstrip('.')} {split}"
        self.fast_bytes = tok.name == "bytes" and tok.vocab_size == 257  # UTF-8 bytes are the ids
        self.bin = open(folder / f"{split}.bin", "wb")
        self.txt = open(folder / f"{split}.txt", "wb")
        self.bin_hash, self.txt_hash = hashlib.sha256(), hashlib.sha256()
        self.n_tokens = self.n_chars = self.n_bytes = self.n_words = 0
        self.docs: list[tuple[int, int]] = []
        self.eod = np.array([tok.eod_id], dtype=dtype)
        # Token frequencies, counted while writing so the entropy needs no second pass.
        self.counts = np.zeros(tok.vocab_size, dtype=np.int64)

    def _write_tokens(self, ids: np.ndarray) -> None:
        data = ids.tobytes()
        self.counts += np.bincount(ids, minlength=len(self.counts))
        self.bin.write(data)
        self.bin_hash.update(data)
        self.n_tokens += len(ids)

    def begin_document(self) -> None:
        if self.docs:
            self._write_tokens(self.eod)
        self.docs.append((self.n_bytes, self.n_tokens))

    def add(self, piece: Piece) -> None:
        if isinstance(piece, str):
            data = piece.encode("utf-8")
            self.n_chars += len(piece)
            self.n_words += len(piece.split())
        else:
            data = piece
            self.n_chars += len(data)
        if not data:
            return
        if self.fast_bytes:
            ids = np.frombuffer(data, dtype=np.uint8).astype(self.dtype)
        else:
            text = piece if isinstance(piece, str) else data.decode("utf-8")
            raw = np.asarray(self.tok.encode(text), dtype=np.int64)
            if raw.size and (raw.min() < 0 or raw.max() >= self.tok.vocab_size):
                raise DataError(f"tokenizer {self.tok.name!r} produced ids outside [0, {self.tok.vocab_size})")
            ids = raw.astype(self.dtype)
        self._write_tokens(ids)
        self.txt.write(data)
        self.txt_hash.update(data)
        self.n_bytes += len(data)
        report(self.progress, self.desc, self.n_bytes, self.total, unit="B")

    def close(self) -> dict[str, Any]:
        self.bin.close()
        self.txt.close()
        np.save(self.folder / f"{self.split}.docs.npy", np.array(self.docs, dtype=np.int64).reshape(-1, 2))
        return {
            "n_tokens": self.n_tokens,
            "n_chars": self.n_chars,
            "n_bytes": self.n_bytes,
            "n_words": None if self.byte_level else self.n_words,
            "n_docs": len(self.docs),
            "sha256": self.bin_hash.hexdigest(),
            "text_sha256": self.txt_hash.hexdigest(),
        }

    def abort(self) -> None:
        self.bin.close()
        self.txt.close()


def unigram_entropy(tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 22) -> float:
    """Entropy in bits per token of the token frequencies (the loss of the best context-free model).

    A language model that has learned anything must beat it; counted in chunks, so a memmap is
    never loaded whole.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in range(0, len(tokens), chunk):
        counts += np.bincount(np.asarray(tokens[i : i + chunk]), minlength=vocab_size)[:vocab_size]
    return _entropy_bits(counts)


def _entropy_bits(counts: np.ndarray) -> float:
    """Entropy in bits of the distribution proportional to ``counts``."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def _build(plan: Plan, tok: Tokenizer, spec: str, out: Path, progress: ProgressFn | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    sizes = plan.sizes() if plan.sizes else {}
    splits: dict[str, Any] = {}
    for split in SPLITS:
        writer = _SplitWriter(out, split, tok, dtype, plan.byte_level, progress, sizes.get(split))
        try:
            for doc in plan.documents(split):
                writer.begin_document()
                for piece in doc:
                    writer.add(piece)
        except BaseException:
            writer.abort()
            raise
        splits[split] = writer.close()
        report(progress, writer.desc, writer.n_bytes, writer.n_bytes, unit="B", finished=True)
        if split == "train":
            train_counts = writer.counts
        if splits[split]["n_tokens"] == 0:
            raise DataError(f"{plan.description}: the {split} split is empty; the source is too small")
        sm = splits[split]
        logger.info("%s %s: %s tokens from %s characters", plan.name, split, f"{sm['n_tokens']:,}", f"{sm['n_chars']:,}")
    h = _entropy_bits(train_counts)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": plan.name,
        "source": plan.description,
        "fingerprint": plan.fingerprint,
        "tokenizer": tok.name,
        "tokenizer_spec": spec,
        "vocab_size": tok.vocab_size,
        "eod_id": tok.eod_id,
        "dtype": dtype.name,
        "byte_level": plan.byte_level,
        "doc_separator": "eod_id between consecutive documents (counted in n_tokens, not in n_chars)",
        "unigram_entropy_bits_per_token": h,
        "unigram_entropy_bits_per_char": h * splits["train"]["n_tokens"] / splits["train"]["n_chars"],
        "splits": splits,
        "prepare_seconds": round(time.perf_counter() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # meta.json goes last: its presence is what says the folder is complete.
    atomic_write_json(out / "meta.json", meta)
    return meta


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock so that concurrent processes (DDP ranks) prepare a corpus once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the atomic rename still keeps the folder consistent
        yield
        return
    with open(lock_path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def corpus_path(source: str, tokenizer: str = "bytes", cache: Path | None = None) -> Path:
    """The folder where ``prepare(source, tokenizer)`` keeps (or will keep) its files."""
    return Path(cache or cache_dir()) / "corpora" / f"{resolve(source, cache).name}-{_tokenizer_tag(tokenizer)}"


def _prepare_plan(plan: Plan, tokenizer: str, cache: Path | None, fresh: bool, progress: ProgressFn | None = None) -> Corpus:
    if plan.bytes_only and tokenizer != "bytes":
        raise DataError(f"{plan.name} is byte-level data: use --tokenizer bytes (got {tokenizer!r})")
    tok = load_tokenizer(tokenizer)
    root = Path(cache or cache_dir())
    corpora = root / "corpora"
    corpora.mkdir(parents=True, exist_ok=True)
    final = corpora / f"{plan.name}-{_tokenizer_tag(tokenizer)}"
    with _locked(corpora / f".{final.name}.lock"):
        if not fresh and (final / "meta.json").is_file():
            try:
                corpus = Corpus(final, verify=True)
                if corpus.meta.get("fingerprint") != json.loads(json.dumps(plan.fingerprint)):  # tuples -> lists  # tuples -> lists
                    raise DataError("its source has changed since it was prepared")
                if corpus.meta.get("vocab_size") != tok.vocab_size or corpus.meta.get("tokenizer") != tok.name:
                    raise DataError("it was made with a different tokenizer")
                logger.debug("using the cached corpus %s", final)
                return corpus
            except DataError as e:
                logger.warning("preparing %s again: %s", final, e)
        # Leftovers of a crashed run (we hold the lock, so nobody else is writing them).
        for stale in corpora.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = corpora / f".{final.name}.tmp-{unique()}"
        tmp.mkdir()  # not tempfile.mkdtemp: that makes it private (0700), and caches may be shared
        try:
            try:
                _build(plan, tok, tokenizer, tmp, progress)
            except OSError as e:  # a write into an open file (a full disk) names no path: name the corpus
                if e.filename is None:
                    raise OSError(e.errno, e.strerror, str(final)) from None
                raise
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    corpus = Corpus(final, verify=False)
    logger.info("prepared %s in %.1f s", final, corpus.meta["prepare_seconds"])
    return corpus


def prepare(source: str = "default", tokenizer: str = "bytes", cache: Path | None = None, fresh: bool = False,
            progress: ProgressFn | None = None) -> Corpus:
    """Tokenize ``source`` into ``<cache>/corpora/<name>-<tokenizer>/`` once and return it.

    A cached corpus is reused when its checksums, tokenizer and source fingerprint match (a run
    after the first is instant); otherwise, or with ``fresh=True``, it is prepared again.  See the
    module docstring for the accepted sources and their splits.
    """
    cache = Path(cache) if cache else None
    return _prepare_plan(resolve(source, cache), tokenizer, cache, fresh, progress)


def prepare_enwik8(
    path: str | Path,
    cache: Path | None = None,
    fresh: bool = False,
    n_train: int = ENWIK8_SPLIT[0],
    n_valid: int = ENWIK8_SPLIT[1],
    n_test: int = ENWIK8_SPLIT[2],
    progress: ProgressFn | None = None,
) -> Corpus:
    """enwik8 with the standard byte split (90M / 5M / 5M); other sizes name the folder after them."""
    plan = enwik8_plan(Path(path).expanduser(), n_train, n_valid, n_test)
    return _prepare_plan(plan, "bytes", Path(cache) if cache else None, fresh, progress)
