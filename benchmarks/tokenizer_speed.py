"""RWKV World tokenizer speed: spikelm's regex encoder vs its naive trie twin vs the ``rwkv`` package.

Usage::

    python benchmarks/tokenizer_speed.py                 # ~4 MB of mixed text (prose, code, CJK...)
    python benchmarks/tokenizer_speed.py corpus.txt      # the first --mb MB of your own files
    python benchmarks/tokenizer_speed.py --mb 8 --slow-mb 1

All encoders run in one process on the same bytes, so the printed ratios are comparable even on a
busy machine; the slow encoders (pure-Python tries) get only the first ``--slow-mb`` MB.  When the
``tokenizers`` library is installed, the rejected Hugging Face design (every World token as an
``AddedToken``, matched by its leftmost-longest Aho-Corasick automaton) is timed as well, single
call and ``encode_batch`` over 64 kB pieces (which uses every core); ids are checked against ours.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from spikelm.data.tokenizers import WorldTokenizer

MULTILINGUAL = (
    "中文文本的分词速度测试：这是一个包含标点符号的句子。東京は日本の首都です。한국어 문장도 있습니다. "
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم. नमस्ते दुनिया. 😀👍🏽🎉 naïve café résumé\n"
)


def sample_text(files: list[str], size: int) -> bytes:
    """``size`` bytes of the given files, or of this repository's sources, docs and multilingual
    lines (code, English, CJK, emoji), repeated as needed."""
    if files:
        parts = [Path(f).read_bytes() for f in files]
    else:
        root = Path(__file__).resolve().parents[1]
        paths = sorted(root.glob("src/spikelm/**/*.py")) + sorted(root.glob("*.md"))
        paths += sorted(Path("/work/shared").glob("**/*.txt")) + sorted(Path("/work/shared").glob("*.md"))
        parts = [p.read_bytes() for p in paths if p.is_file()] + [MULTILINGUAL.encode() * 200]
    data = b"\n".join(parts)
    if not data:
        sys.exit("no text to tokenize")
    return (data * (size // len(data) + 1))[:size]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def hf_added_tokens(tok: WorldTokenizer):
    """The Hugging Face alternative: bytes become the characters U+0100..U+01FF (so any byte string
    is a str), every token is an AddedToken over a WordLevel model with the same ids."""
    from tokenizers import AddedToken, Tokenizer, models

    def as_str(b: bytes) -> str:
        return b.decode("latin-1").translate(SHIFT)

    SHIFT = {i: 0x100 + i for i in range(256)}
    vocab = {as_str(t): i for i, t in enumerate(tok._id_to_bytes) if t}
    hf = Tokenizer(models.WordLevel({**vocab, "[UNK]": 0}, unk_token="[UNK]"))
    hf.add_tokens([AddedToken(s, normalized=False) for s in vocab])
    return hf, as_str


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="text files to tokenize (default: built-in mixed text)")
    ap.add_argument("--mb", type=float, default=4.0, help="MB of text for the fast encoders")
    ap.add_argument("--slow-mb", type=float, default=1.0, help="MB of text for the pure-Python tries")
    args = ap.parse_args()

    data = sample_text(args.files, int(args.mb * 1e6))
    slow = data[: int(args.slow_mb * 1e6)]
    rows: list[tuple[str, float, float]] = []  # (name, MB, seconds)

    tok, load_s = timed(WorldTokenizer)
    print(f"spikelm WorldTokenizer load (parse + regex compile): {load_s:.2f} s")
    fast_ids, s = timed(tok.encode_bytes, data)
    rows.append(("spikelm regex (fast)", len(data) / 1e6, s))
    ref_ids = tok.encode_bytes(slow)  # not a prefix of fast_ids: the cut can split the last token
    naive_ids, s = timed(tok.encode_bytes_naive, slow)
    rows.append(("spikelm trie (naive twin)", len(slow) / 1e6, s))
    assert naive_ids == ref_ids, "fast and naive encoders disagree"

    try:
        from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    except ImportError:
        print("rwkv package not installed: skipping its tokenizer")
    else:
        rwkv_tok, s = timed(TRIE_TOKENIZER, str(tok.path))
        print(f"rwkv TRIE_TOKENIZER load: {s:.2f} s")
        rwkv_ids, s = timed(rwkv_tok.encodeBytes, slow)
        rows.append(("rwkv TRIE_TOKENIZER", len(slow) / 1e6, s))
        assert rwkv_ids == ref_ids, "spikelm and rwkv tokenizers disagree"

    try:
        hf, as_str = hf_added_tokens(tok)
    except ImportError:
        print("tokenizers not installed: skipping the Hugging Face alternative")
    else:
        text = as_str(data)
        ids, s = timed(lambda: hf.encode(text, add_special_tokens=False).ids)
        rows.append(("HF AddedToken Aho-Corasick", len(data) / 1e6, s))
        assert ids == fast_ids, "Hugging Face alternative disagrees"
        piece = 1 << 16  # not exact at piece boundaries; timing only
        pieces = [text[i:i + piece] for i in range(0, len(text), piece)]
        _, s = timed(lambda: [e.ids for e in hf.encode_batch(pieces, add_special_tokens=False)])
        rows.append(("HF AddedToken, encode_batch (all cores)", len(data) / 1e6, s))

    fast_speed = rows[0][1] / rows[0][2]
    print(f"\n{'encoder':42s} {'MB':>6s} {'s':>7s} {'MB/s':>7s} {'fast x':>7s} {'100 MB':>8s}")
    for name, mb, s in rows:
        speed = mb / s
        print(f"{name:42s} {mb:6.2f} {s:7.2f} {speed:7.2f} {fast_speed / speed:7.2f} {100 / speed:7.0f}s")
    print(f"\n{len(fast_ids)} tokens, {len(data) / len(fast_ids):.2f} bytes per token; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (ratios stay comparable)")


if __name__ == "__main__":
    main()
