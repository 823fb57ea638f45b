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

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.tokenizers import get_tokenizer
from ..errors import ConfigError, DataError
from ..progress import ProgressFn, report
from .stream import Shifted, nll_sum

log = logging.getLogger(__name__)

__all__ = ["evaluate_lm"]


def _bos_id(model: nn.Module, bos: int | None) -> int:
    """The token that stands before the first token of the text: the tokenizer's end of document."""
    if bos is not None:
        return int(bos)
    name = getattr(model, "tokenizer_name", None)
    if name is None:
        raise ValueError("the model has no tokenizer_name; pass bos= (the id that precedes the first token)")
    return int(get_tokenizer(name).eod_id)


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    tokens: np.ndarray | list[int],
    n_chars: int,
    chunk: int = 1024,
    ctx: int = 0,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
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
        progress: called with the tokens scored so far.
        bos: the id given as context of the first token; default: the tokenizer's ``eod_id``.

    Returns:
        ``nll_bits``, ``tokens``, ``chars``, ``ppl``, ``bpc``, ``bits_per_token``, ``seconds``,
        ``tokens_per_second``, ``mode``, ``bos``.
    """
    n = len(tokens)
    if n == 0:
        raise DataError("there are no tokens to evaluate")
    if n_chars <= 0:
        raise DataError(f"n_chars must be positive, got {n_chars}")
    if chunk < 1 or ctx < 0 or batch_size < 1:
        raise ConfigError(f"need chunk >= 1, ctx >= 0, batch_size >= 1 (got {chunk}, {ctx}, {batch_size})")
    seq = Shifted(tokens, _bos_id(model, bos))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats = 0.0
    t0 = time.perf_counter()
    if ctx == 0:
        # One stream, read lazily in chunks (a memmap is never loaded whole).
        nats_t, _ = nll_sum(model, seq.inputs, seq.targets, chunk, device=device,
                            on_chunk=lambda b, _n: report(progress, "eval", b, n, unit="tok"))
        nats = float(nats_t.sum())
        report(progress, "eval", n, n, unit="tok", finished=True)
    else:
        n_full = n // ctx
        done = 0
        for w in range(0, n_full, batch_size):
            ws = range(w, min(n_full, w + batch_size))
            x = np.concatenate([seq.inputs[:, i * ctx : (i + 1) * ctx] for i in ws])
            y = np.concatenate([seq.targets[:, i * ctx : (i + 1) * ctx] for i in ws])
            nats += float(nll_sum(model, x, y, chunk, device=device)[0].sum())
            done += x.size
            report(progress, "eval", done, n, unit="tok")
        if n_full * ctx < n:  # the shorter last window
            a = n_full * ctx
            nats += float(nll_sum(model, seq.inputs[:, a:n], seq.targets[:, a:n], chunk, device=device)[0].sum())
        report(progress, "eval", n, n, unit="tok", finished=True)
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
