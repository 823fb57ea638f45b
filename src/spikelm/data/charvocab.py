"""SpikeGPT character vocabularies: ``vocab.json`` (id -> character) and :class:`CharTokenizer`.

The SpikeGPT code's ``train.py`` (char mode) builds the vocabulary from the sorted unique
characters of the training text and writes it as a JSON object ``{"0": "\\n", "1": " ", ...}``,
encoded as UTF-16. A config names such a file ``char:<path>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import TokenizerError

__all__ = ["CHAR_VOCAB_FILE", "CHAR_PREFIX", "read_char_vocab", "is_char_vocab", "CharTokenizer"]

CHAR_VOCAB_FILE = "vocab.json"  # a SpikeGPT character vocabulary, as its train.py writes it
CHAR_PREFIX = "char:"


def read_char_vocab(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read a SpikeGPT character vocabulary (``{"id": "char", ...}``, UTF-16 as the code writes it,
    or UTF-8) into ``{id: char}``; ids must be exactly ``0 .. n-1``."""
    p = Path(path)
    if not p.is_file():
        raise TokenizerError(f"character vocabulary {str(p)!r} does not exist")
    raw = p.read_bytes()
    # The code writes encoding="utf-16" (a BOM, then UTF-16); accept UTF-8 too.
    enc = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        table = json.loads(raw.decode(enc))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{p}: not a JSON id -> character table ({e})") from None
    if not isinstance(table, dict) or not table:
        raise TokenizerError(f"{p}: expected a non-empty JSON object mapping ids to characters")
    try:
        out = {int(k): v for k, v in table.items()}
    except ValueError:
        raise TokenizerError(f"{p}: keys must be integer ids, got e.g. {next(iter(table))!r}") from None
    if sorted(out) != list(range(len(out))):
        raise TokenizerError(f"{p}: ids must be 0 .. {len(out) - 1} without gaps")
    bad = [k for k, v in out.items() if not (isinstance(v, str) and v)]
    if bad:
        raise TokenizerError(f"{p}: id {bad[0]} does not map to a non-empty string")
    return out


def is_char_vocab(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a character vocabulary (as opposed to, e.g., a tokenizer.json)."""
    try:
        read_char_vocab(path)
    except TokenizerError:
        return False
    return True


class CharTokenizer:
    """A SpikeGPT character vocabulary: one id per character (``Tokenizer`` protocol of
    :mod:`spikelm.data.tokenizers`).

    Characters not in the vocabulary are encoded as ``unknown`` (a space by default, as the code's
    ``run.py`` does); if that is absent too, encoding fails. The vocabulary has no end-of-document
    token, so ``eod_id`` is -1 (never produced).
    """

    eod_id = -1

    def __init__(self, vocab_path: str | os.PathLike[str], unknown: str = " ") -> None:
        self.itos = read_char_vocab(vocab_path)
        self.stoi = {ch: i for i, ch in self.itos.items()}
        self.name = CHAR_PREFIX + str(vocab_path)
        self.vocab_size = len(self.itos)
        self.unknown_id = self.stoi.get(unknown)

    def encode(self, text: str) -> list[int]:
        ids = []
        for ch in text:
            i = self.stoi.get(ch, self.unknown_id)
            if i is None:
                raise TokenizerError(f"character {ch!r} is not in the vocabulary {self.name!r} (and no unknown-character id)")
            ids.append(i)
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i] for i in ids if i in self.itos)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.decode(ids).encode("utf-8")
