"""The lm-evaluation-harness adapter gives the same numbers as spikelm's built-in scorer.

The harness runs offline on local YAML tasks (written here into a temporary folder) over the
JSONL files in ``data/``: a multiple-choice task, a WinoGrande-style partial-scoring task and a
LAMBADA-style last-word task.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

# Local JSON data only: never reach for the Hugging Face hub (set before datasets is imported).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'spikelm[eval]')")

from spikelm.evaluate import multiple_choice as mc  # noqa: E402
from spikelm.evaluate import harness as harness_module  # noqa: E402
from spikelm.evaluate.harness import MODEL_NAME, register  # noqa: E402
from spikelm.evaluate.tasks import load_task  # noqa: E402

DATA = Path(__file__).parent / "data"


def _yaml(name: str, data: Path, cache: Path, body: str) -> str:
    return (
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {cache}\n"
        "test_split: test\n" + body
    )


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tasks"
    d.mkdir()
    cache = tmp_path / "hf_cache"
    (d / "mc.yaml").write_text(_yaml("spikelm_tiny_mc", DATA / "tiny_mc.jsonl", cache, (
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        "doc_to_target: label\n"
        "doc_to_choice: choices\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )))
    # WinoGrande's partial scoring: the gold index as "text", one context per option, shared target.
    (d / "partial.yaml").write_text(_yaml("spikelm_tiny_partial", DATA / "tiny_partial.jsonl", cache, (
        "output_type: multiple_choice\n"
        "doc_to_text: label\n"
        'doc_to_choice: "{{ [context + choices[0], context + choices[1]] }}"\n'
        "doc_to_target: suffix\n"
        "metric_list:\n  - metric: acc\n"
    )))
    (d / "lambada.yaml").write_text(_yaml("spikelm_tiny_lambada", DATA / "tiny_lambada.jsonl", cache, (
        "output_type: loglikelihood\n"
        'doc_to_text: "{{context}}"\n'
        "doc_to_target: \"{{' ' + target}}\"\n"
        "metric_list:\n  - metric: perplexity\n  - metric: acc\n"
    )))
    return d


def test_harness_matches_builtin_scorer(task_dir, tiny_rwkv6):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    cls = register()
    lm = cls(model=tiny_rwkv6, batch_size=3)
    tasks = {"spikelm_tiny_mc": "tiny_mc.jsonl", "spikelm_tiny_partial": "tiny_partial.jsonl",
             "spikelm_tiny_lambada": "tiny_lambada.jsonl"}
    out = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=0, task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                          log_samples=True, bootstrap_iters=0)
    scorer = mc.Scorer(tiny_rwkv6, batch_size=3)
    for name, file in tasks.items():
        ours = mc.score_task(scorer, load_task(str(DATA / file)), shots=0)
        metrics = ours.metrics()
        theirs = out["results"][name]
        assert theirs["acc,none"] == pytest.approx(metrics["acc"], abs=1e-12), name
        if "acc_norm" in metrics:
            assert theirs["acc_norm,none"] == pytest.approx(metrics["acc_norm"], abs=1e-12)
        if "perplexity" in metrics:
            # exp(-mean log-likelihood): compare the logs (float32 batches differ in the last digits)
            assert math.log(theirs["perplexity,none"]) == pytest.approx(math.log(metrics["perplexity"]), abs=1e-4)
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        assert len(samples) == ours.n
        for s, lls in zip(samples, ours.lls):
            harness_lls = [float(r[0][0]) for r in s["resps"]]
            assert harness_lls == pytest.approx(lls, abs=1e-4), (name, s["doc_id"])


def test_registry_args_rolling_and_generation(tiny_rwkv6, monkeypatch):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model, model_registry

    import spikelm

    register()
    assert "hf" in model_registry  # registering spikelm must not hide the harness's own models
    monkeypatch.setattr(harness_module, "load", lambda path, device="cpu", dtype=None: tiny_rwkv6)
    # The harness's CLI passes its own batch_size (default 1) beside model_args: model_args win.
    lm = get_model(MODEL_NAME).create_from_arg_string("path=/some/ckpt,batch_size=4", {"batch_size": 1, "device": None})
    assert lm.scorer.batch_size == 4 and lm.tokenizer_name == "bytes"
    with pytest.raises(spikelm.errors.SpikelmError, match="unknown spikelm model_args"):
        get_model(MODEL_NAME).create_from_arg_string("path=x,temperture=1")

    text = "The cat sat on the mat."
    (ll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    (ref, _), = mc.Scorer(tiny_rwkv6).loglikelihood([("", text)])
    assert ll == pytest.approx(ref, abs=1e-3)

    free = mc.Scorer(tiny_rwkv6).generate("Once upon", max_new_tokens=8)
    (gen,) = lm.generate_until([Instance("generate_until", {}, ("Once upon", {"max_gen_toks": 8}), 0)])
    assert gen == free
    if len(free) > 2:
        (cut,) = lm.generate_until([Instance("generate_until", {}, ("Once upon", {"until": [free[2]], "max_gen_toks": 8}), 0)])
        assert cut == free[: free.index(free[2])]
