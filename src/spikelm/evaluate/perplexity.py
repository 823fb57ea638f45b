"""Perplexity and bits per character of a language model over a whole text.

Two ways of reading the text, both scoring every token exactly once:

* **carried state** (``ctx=0``, the default): the text is one stream, fed in chunks of ``chunk``
  tokens with the recurrent state carried from chunk to chunk, so every token is predicted from
  the entire text before it. The result does not depend on ``chunk`` (up to float rounding) and
  memory does not grow with the length of the text: only one chunk's logits exist at a time.
  This is how a recurrent model is meant to be used, and the lowest loss it can report.
* **fixed windows** (``ctx=N``): the text is cut into consecutive, non-overlapping windows of N
  tokens and the state is reset at the start of each, so a token sees only the earlier tokens of
  its own window (on average N/2 of them). This is how many papers report perplexity for models
  with a fixed training context (e.g. evaluation on ``block_size`` windows), so use it to compare
  with such numbers. Windows are independent, so they are batched.

**The first token.** Nothing precedes the first token of the text, so the model is given the
tokenizer's end-of-document token (``eod_id``) as its context: the input sequence is
``[eod] + tokens[:-1]`` and the targets are ``tokens``. Every token of the text is thus scored, and
the number of predictions equals the number of tokens, in both modes (in window mode the first
token of each later window is predicted from the last token of the previous window, which is its
only context). Corpora separate documents by the same token, so this is also what the model saw
at document starts during training.

**Units.** ``nll_bits`` is the total negative log2-likelihood; ``ppl = 2 ** (nll_bits / tokens)``
is the per-token perplexity and ``bpc = nll_bits / chars``. For byte-level models ``chars`` should
be the number of UTF-8 bytes (the enwik8 convention: "bits per character" is bits per byte); the
command line does this and says which unit it used.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, SpikelmError

log = logging.getLogger(__name__)

__all__ = ["evaluate_lm", "load_eval_text", "cli_eval"]


def _bos_id(model: nn.Module, bos: int | None) -> int:
    """The token that stands before the first token of the text: the tokenizer's end of document."""
    if bos is not None:
        return int(bos)
    name = getattr(model, "tokenizer_name", None)
    if name is None:
        raise ValueError("the model has no tokenizer_name; pass bos= (the id that precedes the first token)")
    from ..data.tokenizers import get_tokenizer

    return int(get_tokenizer(name).eod_id)


class _Shifted:
    """Inputs ``[bos] + tokens[:-1]`` and targets ``tokens``, sliced lazily (a memmap stays on disk)."""

    def __init__(self, tokens: np.ndarray | Sequence[int], bos: int) -> None:
        self.tokens = tokens
        self.bos = bos
        self.n = len(tokens)

    def inputs(self, a: int, b: int) -> np.ndarray:
        if a == 0:
            return np.concatenate(([self.bos], np.asarray(self.tokens[0 : b - 1], dtype=np.int64))).astype(np.int64)
        return np.asarray(self.tokens[a - 1 : b - 1], dtype=np.int64)

    def targets(self, a: int, b: int) -> np.ndarray:
        return np.asarray(self.tokens[a:b], dtype=np.int64)


def _nll_sum(model: nn.Module, x: np.ndarray, y: np.ndarray, chunk: int, device: torch.device) -> float:
    """Total NLL (nats) of rows ``x -> y`` (B, L), read in chunks of ``chunk`` with the state carried."""
    state = None
    total = 0.0
    for a in range(0, x.shape[1], chunk):
        xb = torch.from_numpy(np.ascontiguousarray(x[:, a : a + chunk])).to(device)
        yb = torch.from_numpy(np.ascontiguousarray(y[:, a : a + chunk])).to(device)
        logits, state = model(xb, state)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum"))
    return total


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    tokens: np.ndarray | list[int],
    n_chars: int,
    chunk: int = 1024,
    ctx: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    bos: int | None = None,
) -> dict[str, Any]:
    """Score every token of ``tokens`` and return totals and rates.

    Args:
        model: ``forward(idx, state=None) -> (logits, state)``; evaluated in eval mode on its device.
        tokens: the token ids of the whole text (a list, array or memmap).
        n_chars: characters (or bytes, for byte-level models) of the text, for bits per character.
        chunk: tokens per forward call; the state is carried between calls (memory ~ chunk).
        ctx: 0 to read the text as one stream; N > 0 for non-overlapping windows of N tokens with
            the state reset at each (see the module docstring).
        batch_size: windows scored together in ``ctx`` mode (the stream mode has a single row).
        progress: show a progress bar.
        bos: the id given as context of the first token; default: the tokenizer's ``eod_id``.

    Returns:
        ``nll_bits``, ``tokens``, ``chars``, ``ppl``, ``bpc``, ``bits_per_token``, ``seconds``,
        ``tokens_per_second``, ``mode``, ``bos``.
    """
    from tqdm import tqdm

    n = len(tokens)
    if n == 0:
        raise DataError("there are no tokens to evaluate")
    if n_chars <= 0:
        raise DataError(f"n_chars must be positive, got {n_chars}")
    if chunk < 1 or ctx < 0 or batch_size < 1:
        raise ValueError(f"need chunk >= 1, ctx >= 0, batch_size >= 1 (got {chunk}, {ctx}, {batch_size})")
    seq = _Shifted(tokens, _bos_id(model, bos))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats = 0.0
    t0 = time.perf_counter()
    with tqdm(total=n, unit="tok", unit_scale=True, desc="eval", disable=not progress, dynamic_ncols=True) as bar:
        if ctx == 0:
            # One stream: _nll_sum would do it in one call, but that would hold the whole text.
            state = None
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                xb = torch.from_numpy(seq.inputs(a, b)).to(device)[None]
                yb = torch.from_numpy(seq.targets(a, b)).to(device)
                logits, state = model(xb, state)
                nats += float(F.cross_entropy(logits[0].float(), yb, reduction="sum"))
                bar.update(b - a)
        else:
            n_full = n // ctx
            for w in range(0, n_full, batch_size):
                ws = range(w, min(n_full, w + batch_size))
                x = np.stack([seq.inputs(i * ctx, (i + 1) * ctx) for i in ws])
                y = np.stack([seq.targets(i * ctx, (i + 1) * ctx) for i in ws])
                nats += _nll_sum(model, x, y, chunk, device)
                bar.update(x.size)
            if n_full * ctx < n:  # the shorter last window
                a = n_full * ctx
                nats += _nll_sum(model, seq.inputs(a, n)[None], seq.targets(a, n)[None], chunk, device)
                bar.update(n - a)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    model.train(was_training)
    bits = nats / math.log(2)
    return {
        "nll_bits": bits,
        "tokens": n,
        "chars": int(n_chars),
        "ppl": 2.0 ** (bits / n),
        "bpc": bits / n_chars,
        "bits_per_token": bits / n,
        "seconds": seconds,
        "tokens_per_second": n / seconds if seconds > 0 else math.inf,
        "mode": f"windows of {ctx} tokens, state reset at each" if ctx else f"one stream, state carried across chunks of {chunk}",
        "bos": seq.bos,
    }


# ---------------------------------------------------------------------------- command line
def _is_text_file(data: str) -> bool:
    """A path to a plain text file (evaluated whole), as opposed to a corpus name for ``prepare``."""
    p = Path(data).expanduser()
    return p.is_file() and not p.name.startswith("enwik8") and p.suffix != ".zip"


def load_eval_text(data: str, split: str, tokenizer: Any, tokenizer_spec: str, max_chars: int) -> tuple[np.ndarray | list[int], str, int, str]:
    """(tokens, unit, count of units, description) of what ``--data`` names."""
    byte_level = tokenizer.name == "bytes"
    if _is_text_file(data):
        try:
            text = Path(data).expanduser().read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{data}: not UTF-8 text ({e})") from None
        if max_chars > 0:
            text = text[:max_chars]
        if not text:
            raise DataError(f"{data}: the text is empty")
        n = len(text.encode("utf-8")) if byte_level else len(text)
        return tokenizer.encode(text), "byte" if byte_level else "char", n, f"{data} (whole file)"
    from ..data.corpora import prepare

    corpus = prepare(data, tokenizer_spec)
    desc = f"{corpus.name} {split} split ({corpus.path})"
    if max_chars <= 0:
        tokens = corpus.tokens(split)
        n = corpus.n_bytes(split) if byte_level else corpus.n_chars(split)
        return tokens, "byte" if byte_level else "char", n, desc
    # The first max_chars characters, as the corpus builds them: documents joined by eod_id.
    ids: list[int] = []
    left, n = max_chars, 0
    for doc in corpus.documents(split):
        part = doc[:left]
        if ids:
            ids.append(tokenizer.eod_id)
        ids.extend(tokenizer.encode(part))
        n += len(part.encode("utf-8")) if byte_level else len(part)
        left -= len(part)
        if left <= 0:
            break
    return ids, "byte" if byte_level else "char", n, f"{desc}, first {max_chars:,} characters"


def cli_eval(ckpt: str, data: str = "default", split: str = "test", json_: bool = False, ctx: int = 0,
             chunk: int = 1024, max_chars: int = 0, batch_size: int = 8, device: str = "auto",
             progress: bool = True) -> int:
    """Perplexity and bits per character of a model over a whole text split.

    The first token is predicted from the end-of-document token; every token is scored once.
    For byte-level models, bits per character is bits per UTF-8 byte (the enwik8 convention);
    the output says which unit it used.

    Args:
        ckpt: a checkpoint: spikelm folder (e.g. out_dir/final of `spikelm train`), official .pth or HF folder.
        data: a corpus (default, brown, enwik8:PATH, wikitext-2[:FOLDER], text:PATH...) or a plain text file, scored whole.
        split: which split of a corpus: train, valid or test (ignored for a plain text file).
        json_: print a JSON object instead of text.
        ctx: 0 reads the text as one stream with the state carried; N > 0 uses non-overlapping windows of N tokens with the state reset at each (as many papers report).
        chunk: tokens per forward call (memory; the result does not depend on it).
        max_chars: score only the first N characters (0: all).
        batch_size: windows scored together with --ctx.
        device: auto (CUDA if available), cpu, cuda or cuda:N.
        progress: show a progress bar.
    """
    from ..checkpoint import load
    from ..data.tokenizers import get_tokenizer

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SpikelmError(f"--device {device}: CUDA is not available; use --device cpu")
    model = load(ckpt, device=dev)
    name = getattr(model, "tokenizer_name", "world")
    try:
        tokenizer = get_tokenizer(name)
    except (ValueError, OSError) as e:
        raise SpikelmError(f"{ckpt}: cannot load its tokenizer {name!r} ({e})") from None
    tokens, unit, n_units, desc = load_eval_text(data, split, tokenizer, name, max_chars)
    res = evaluate_lm(model, tokens, n_units, chunk=chunk, ctx=ctx, batch_size=batch_size, progress=progress)
    out = {"checkpoint": str(ckpt), "data": desc, "tokenizer": tokenizer.name, "bpc_unit": unit, **res}
    if json_:
        print(json.dumps(out, indent=2))
    else:
        print(f"{ckpt} on {desc}")
        print(f"  mode:            {res['mode']}")
        print(f"  tokens:          {res['tokens']:,} ({n_units:,} {unit}s)")
        print(f"  perplexity:      {res['ppl']:.4f} per token ({res['bits_per_token']:.4f} bits/token)")
        print(f"  bits per {unit}:   {res['bpc']:.4f}" + ("  (byte-level model: bits per UTF-8 byte)" if unit == "byte" else ""))
        print(f"  speed:           {res['tokens_per_second']:,.0f} tokens/s ({res['seconds']:.1f} s)")
    return 0
