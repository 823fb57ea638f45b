"""Text generation through the recurrent state: prefill the prompt once, then one token at a time.

Sampling: temperature, then top-k, then top-p (nucleus) on the remaining probabilities. Tokens
are streamed as bytes: a World or byte token may end inside a UTF-8 character, so the streamer
holds back an incomplete character until the next token completes it.
"""

from __future__ import annotations

import codecs
import inspect
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from .data.tokenizers import get_tokenizer
from .errors import ConfigError, SpikelmError

log = logging.getLogger(__name__)

__all__ = ["sample_logits", "check_sampling", "generate_tokens", "generate", "GenerationResult"]


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Raise a named error for sampling parameters outside their range."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"--top-k must be >= 0 (0 = no top-k cut), got {top_k}")
    if not (0.0 < top_p <= 1.0):
        raise ConfigError(f"--top-p must be in (0, 1] (1 = no nucleus cut), got {top_p}")


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> int:
    """Pick one token id from a (V,) logit vector. ``temperature <= 0`` means greedy."""
    check_sampling(max(temperature, 0.0), top_k, top_p)
    logits = logits.float()
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k > 0 and top_k < probs.numel():
        kth = torch.topk(probs, top_k).values[-1]
        probs = torch.where(probs < kth, torch.zeros_like(probs), probs)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the first token)
        drop = cum - sorted_p >= top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_tokens(model: nn.Module, prompt_ids: list[int], max_tokens: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                    stop_ids: tuple[int, ...] = ()) -> Iterator[int]:
    """Yield new token ids one by one; the prompt is prefilled in one parallel call."""
    if not prompt_ids:
        raise ConfigError("the prompt encodes to no tokens; give a non-empty prompt")
    check_sampling(temperature, top_k, top_p)
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    if accepts_last_only(model):
        logits, state = model(torch.tensor([prompt_ids], device=device), None, last_only=True)
    else:
        logits, state = model(torch.tensor([prompt_ids], device=device), None)
    for i in range(max_tokens):
        tok = sample_logits(logits[0, -1].cpu(), temperature, top_k, top_p, gen)
        if tok in stop_ids:
            return
        yield tok
        if i + 1 < max_tokens:  # no forward after the last token: its logits would go unused
            logits, state = model(torch.tensor([[tok]], device=device), state)


def accepts_last_only(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``last_only`` (compute the head on the last position only)."""
    try:
        return "last_only" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class GenerationResult:
    prompt: str
    text: str
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    seconds: float = 0.0  # the whole generation
    first_token_seconds: float = 0.0  # the prompt's prefill and the first token, one-off costs included

    @property
    def tokens_per_second(self) -> float:
        """The decoding speed after the first token: one-off costs (a kernel build, a first call's
        compilation, the prefill) fall before it and are in ``first_token_seconds``, not here.
        NaN with fewer than two tokens."""
        decode = self.seconds - self.first_token_seconds
        return (len(self.tokens) - 1) / decode if len(self.tokens) > 1 and decode > 0 else float("nan")


def generate(model: nn.Module, prompt: str, max_tokens: int = 100, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 0.85, seed: int | None = 0, tokenizer=None,
             on_text: Callable[[str], None] | None = None) -> GenerationResult:
    """Generate text after ``prompt``; ``on_text`` receives each complete piece of text as it comes.

    An empty prompt starts from the end-of-document token alone (unconditional generation).
    """
    check_sampling(temperature, top_k, top_p)
    tok = tokenizer or get_tokenizer(getattr(model, "tokenizer_name", "bytes"))
    try:
        ids = tok.encode(prompt) if prompt else []
    except UnicodeEncodeError as e:  # a lone surrogate the tokenizer cannot encode
        raise ConfigError(f"--prompt: {prompt[e.start]!r} at character {e.start} is not valid text for the "
                          f"{tok.name} tokenizer; give a prompt in valid UTF-8") from None
    except SpikelmError as e:  # e.g. a character the vocabulary lacks
        raise ConfigError(f"--prompt: {e}") from None
    if not ids:
        if tok.eod_id < 0:
            raise ConfigError("this tokenizer has no end-of-document token to start from; give a non-empty --prompt")
        ids = [tok.eod_id]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out_ids: list[int] = []
    pieces: list[str] = []
    t0 = time.perf_counter()
    first = 0.0
    for t in generate_tokens(model, ids, max_tokens, temperature, top_k, top_p, seed, stop_ids=(tok.eod_id,)):
        if not out_ids:
            first = time.perf_counter() - t0
        out_ids.append(t)
        piece = decoder.decode(tok.decode_bytes([t]))
        if piece:
            pieces.append(piece)
            if on_text:
                on_text(piece)
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append(tail)
        if on_text:
            on_text(tail)
    return GenerationResult(prompt, "".join(pieces), out_ids, len(ids), time.perf_counter() - t0, first)
