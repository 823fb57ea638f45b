"""THE one place that turns a ``--data`` / ``--split`` argument into token ids.

Every command that reads text (``eval``, ``sweep``, ``energy``, ``convert``'s calibration, ``nlu``'s
calibration, the demo) goes through :func:`split_tokens` or :func:`calibration_batches`, so they
agree on what a data argument means:

* a corpus name (``default``, ``brown:PATH``, ``enwik8:PATH``, ``wikitext-103:FOLDER``) or a path
  to a text file or folder is prepared once by :func:`spikelm.data.build.prepare` and ``split``
  picks ``train``, ``valid`` or ``test`` of it. **A plain text file is split exactly as
  ``spikelm data prepare`` splits it** (the last ~5% of its bytes is ``test``, the 5% before it
  ``valid``), so ``eval --data my.txt --split test`` scores only the held-out end of the file,
  never the text a model was trained on;
* ``whole_file=True`` reads a plain text file whole instead (the description says so).

Calibration always reads the ``train`` split: the split evaluated later is never calibrated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..progress import ProgressFn
from .build import prepare
from .corpus import SPLITS, canonical_split
from .tokenizers import load_tokenizer

__all__ = ["TextTokens", "split_tokens", "calibration_batches", "is_text_file", "DEFAULT_CALIB_DATA"]

DEFAULT_CALIB_DATA = "default"  # the embedded Brown corpus's train split


@dataclass
class TextTokens:
    """Token ids of a text, with the count of the units bits-per-character divides by."""

    tokens: np.ndarray | Sequence[int]
    unit: str  # "byte" for byte-level tokenizers (bits per UTF-8 byte), else "char"
    n_units: int
    description: str  # what was read, for the output: corpus, split, whole file, truncation


def is_text_file(data: str) -> bool:
    """A path to one plain text file (enwik8 files are byte corpora with their own split)."""
    p = Path(data).expanduser()
    return p.is_file() and not p.name.startswith("enwik8") and p.suffix != ".zip"


def _whole_file(data: str, tokenizer_spec: str, max_chars: int) -> TextTokens:
    tok = load_tokenizer(tokenizer_spec)
    byte_level = tok.name == "bytes"
    try:
        text = Path(data).expanduser().read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{data}: not UTF-8 text ({e}); pass a UTF-8 text file") from None
    if max_chars > 0:
        text = text[:max_chars]
    if not text:
        raise DataError(f"{data}: the text is empty; pass a file with some text in it")
    n = len(text.encode("utf-8")) if byte_level else len(text)
    desc = f"{data} (whole file" + (f", first {max_chars:,} characters)" if max_chars > 0 else ")")
    return TextTokens(np.asarray(tok.encode(text), dtype=np.int64), "byte" if byte_level else "char", n, desc)


def split_tokens(data: str, split: str, tokenizer_spec: str, *, whole_file: bool = False, max_chars: int = 0,
                 max_tokens: int = 0, progress: ProgressFn | None = None) -> TextTokens:
    """Token ids of one split of ``data`` (see the module docstring), optionally truncated.

    ``max_chars`` keeps the first that many characters (documents joined by ``eod_id`` as the
    corpus builds them); ``max_tokens`` the first that many tokens. A memmap is returned untouched
    when nothing is truncated, so a large split is never read into memory here.
    """
    if whole_file:
        if not is_text_file(data):
            raise DataError(f"--whole-file needs a plain text file; {data!r} is not one (drop --whole-file to use its {split} split)")
        out = _whole_file(data, tokenizer_spec, max_chars)
    else:
        split = canonical_split(split)
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)} (validation, val and dev mean valid)")
        corpus = prepare(data, tokenizer_spec, progress=progress)
        tok = corpus.tokenizer
        byte_level = tok.name == "bytes"
        unit = "byte" if byte_level else "char"
        how = " (split as `spikelm data prepare` splits a text file)" if is_text_file(data) else ""
        desc = f"{corpus.name} {split} split{how} ({corpus.path})"
        if max_chars <= 0:
            n = corpus.n_bytes(split) if byte_level else corpus.n_chars(split)
            out = TextTokens(corpus.tokens(split), unit, n, desc)
        else:
            ids: list[int] = []
            left, n = max_chars, 0
            for doc in corpus.documents(split):
                part = doc[:left]
                if ids:
                    ids.append(tok.eod_id)
                ids.extend(tok.encode(part))
                n += len(part.encode("utf-8")) if byte_level else len(part)
                left -= len(part)
                if left <= 0:
                    break
            out = TextTokens(np.asarray(ids, dtype=np.int64), unit, n, f"{desc}, first {max_chars:,} characters")
    if len(out.tokens) == 0:
        raise DataError(f"{data}: the {split} split has no tokens; pass more text")
    if max_tokens > 0 and len(out.tokens) > max_tokens:
        out = TextTokens(np.asarray(out.tokens[:max_tokens], dtype=np.int64), out.unit, 0, f"{out.description}, first {max_tokens:,} tokens")
    return out


def calibration_batches(data: str, tokenizer_spec: str, n_batches: int = 8, batch_size: int = 4, ctx_len: int = 256,
                        seed: int = 0, progress: ProgressFn | None = None) -> list[torch.Tensor]:
    """``n_batches`` batches of (``batch_size``, ``ctx_len``) token ids from the ``train`` split of ``data``.

    Windows start at seeded random offsets, so a calibration is reproducible.
    """
    if n_batches < 1 or batch_size < 1 or ctx_len < 1:
        raise DataError(f"calibration needs at least one batch of one window of one token (got {n_batches} x {batch_size} x {ctx_len})")
    try:
        ids = split_tokens(data, "train", tokenizer_spec, progress=progress).tokens
    except DataError as e:
        if data != DEFAULT_CALIB_DATA:
            raise
        # The default calibration text is the embedded Brown corpus: say so, and how to use one's own.
        raise DataError(f"{e} (calibration reads --calib-data, by default the embedded Brown corpus: pass "
                        "--calib-data YOUR_TEXT.txt to calibrate on your own text)") from None
    if len(ids) < ctx_len + 1:
        raise DataError(f"calibration data {data!r} has {len(ids)} training tokens; need at least {ctx_len + 1} "
                        "(pass more text with --calib-data, or a smaller --calib-ctx)")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        starts = rng.integers(0, len(ids) - ctx_len, size=batch_size)
        out.append(torch.from_numpy(np.stack([np.asarray(ids[s : s + ctx_len], dtype=np.int64) for s in starts])))
    return out
