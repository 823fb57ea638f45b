"""Text generation through the recurrent state: prefill the prompt once, then one token at a time.

Sampling: temperature, then top-k, then top-p (nucleus) on the remaining probabilities. Tokens
are streamed as bytes: a World or byte token may end inside a UTF-8 character, so the streamer
holds back an incomplete character until the next token completes it.
"""

from __future__ import annotations

import codecs
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["sample_logits", "generate_tokens", "generate", "cli_generate", "GenerationResult"]


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> int:
    """Pick one token id from a (V,) logit vector. ``temperature <= 0`` means greedy."""
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
        raise ValueError("the prompt encodes to no tokens; give a non-empty prompt")
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    logits, state = model(torch.tensor([prompt_ids], device=device), None, last_only=True) \
        if _accepts_last_only(model) else model(torch.tensor([prompt_ids], device=device), None)
    for _ in range(max_tokens):
        tok = sample_logits(logits[0, -1].cpu(), temperature, top_k, top_p, gen)
        if tok in stop_ids:
            return
        yield tok
        logits, state = model(torch.tensor([[tok]], device=device), state)


def _accepts_last_only(model: nn.Module) -> bool:
    import inspect

    return "last_only" in inspect.signature(model.forward).parameters


@dataclass
class GenerationResult:
    prompt: str
    text: str
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("nan")


def generate(model: nn.Module, prompt: str, max_tokens: int = 100, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 0.85, seed: int | None = 0, tokenizer=None,
             on_text: Callable[[str], None] | None = None) -> GenerationResult:
    """Generate text after ``prompt``; ``on_text`` receives each complete piece of text as it comes."""
    from .data.tokenizers import get_tokenizer

    tok = tokenizer or get_tokenizer(getattr(model, "tokenizer_name", "bytes"))
    ids = tok.encode(prompt)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out_ids: list[int] = []
    pieces: list[str] = []
    t0 = time.perf_counter()
    for t in generate_tokens(model, ids, max_tokens, temperature, top_k, top_p, seed, stop_ids=(tok.eod_id,)):
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
    return GenerationResult(prompt, "".join(pieces), out_ids, len(ids), time.perf_counter() - t0)


def cli_generate(checkpoint: str, prompt: str = "The", max_tokens: int = 200, temperature: float = 1.0,
                 top_p: float = 0.85, top_k: int = 0, seed: int = 0, encoding: str = "", json_: bool = False,
                 device: str = "cpu") -> int:
    """Generate text from a checkpoint, streaming tokens as they come.

    Args:
        checkpoint: official RWKV-6 .pth, Hugging Face folder, or spikelm folder (ANN, converted, SpikeGPT).
        prompt: text the generation continues.
        max_tokens: number of new tokens.
        temperature: softmax temperature; 0 means greedy decoding.
        top_p: nucleus sampling mass (1.0 disables it).
        top_k: keep only the k most likely tokens (0 disables it).
        seed: random seed, for reproducible samples.
        encoding: convert to spikes before generating: a preset name such as SpikeRWKV-4L (empty: as stored).
        json_: print one JSON object (prompt, text, token ids, timings) instead of streaming.
        device: torch device, e.g. cpu or cuda.
    """
    import sys

    from .checkpoint import load
    from .errors import SpikelmError

    if max_tokens < 1:
        raise SpikelmError("--max-tokens must be >= 1")
    model = load(checkpoint, device=device)
    if encoding:
        from .convert.to_spiking import apply_preset

        model = apply_preset(model, encoding)
    stream = None if json_ else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    if not json_:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    res = generate(model, prompt, max_tokens, temperature, top_k, top_p, seed, on_text=stream)
    if json_:
        print(json.dumps({"prompt": res.prompt, "text": res.text, "tokens": res.tokens, "prompt_tokens": res.prompt_tokens,
                          "seconds": round(res.seconds, 4), "tokens_per_second": round(res.tokens_per_second, 2)}))
    else:
        sys.stdout.write("\n")
        print(f"[{len(res.tokens)} tokens, {res.tokens_per_second:.1f} tokens/s]", file=sys.stderr)
    return 0
