"""lm-evaluation-harness adapter: evaluate spikelm checkpoints with ``lm_eval`` tasks.

Run the harness's own command line through this module, which registers the model name
``spikelm`` first::

    spikelm-lm-eval --model spikelm \\
        --model_args path=RWKV-x060-World-1B6.pth,encoding=SpikeRWKV-4L,batch_size=16 \\
        --tasks arc_easy,piqa --num_fewshot 5

or from Python::

    from spikelm.evaluate.harness import SpikelmLM     # importing registers "spikelm"... lazily:
    import lm_eval
    lm = SpikelmLM(model=my_model)                     # or register(); simple_evaluate(model="spikelm", ...)
    lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])

Why a wrapper module: lm-eval (checked with 0.4.13) knows only the models in its registry, which
it fills from its own ``MODEL_MAPPING``; it reads no plugin entry-point group for models, so
``lm_eval --model spikelm`` works only in a process that has imported spikelm's adapter.
``spikelm-lm-eval ARGS`` (:mod:`spikelm.cli.lm_eval`) is ``lm_eval ARGS`` after that import.

``model_args`` (comma-separated ``key=value``): ``path`` (checkpoint, required unless a model
object is passed), ``encoding`` (spiking preset, "" = as loaded), ``calib_data`` (what the
preset calibrates on, default ``default``: the embedded corpus's train split), ``device`` (default cpu),
``dtype`` (float32 / bfloat16 / float16), ``batch_size`` (choices per forward; "auto" = 16),
``prefix_eod`` (True: contexts start with the end-of-document token), ``state_reuse`` (True),
``max_gen_toks`` (256). The harness's ``--device`` and ``--batch_size`` options reach here too
(``model_args`` win when both are given); note that the harness's default batch size is 1, so
pass ``--batch_size 16`` (or ``batch_size=16`` in ``model_args``) to batch the choices.

Requests are scored by :class:`spikelm.evaluate.multiple_choice.Scorer`, with the tokenization
and state reuse documented there: requests of one document share their common token prefix, so
the few-shot context of an item is run once for all its choices. ``loglikelihood_rolling``
feeds the whole text through the recurrent state (no window); ``generate_until`` decodes
greedily unless ``do_sample`` is set.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from ..checkpoints import load
from ..data.text import DEFAULT_CALIB_DATA
from ..devices import DTYPES, resolve_device
from ..errors import ConfigError, SpikelmError
from .multiple_choice import Scorer
from .variants import apply_encoding

__all__ = ["register", "SpikelmLM", "MODEL_NAME"]  # noqa: F822 (SpikelmLM: module __getattr__)

log = logging.getLogger(__name__)

MODEL_NAME = "spikelm"


def _import_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise SpikelmError("lm-evaluation-harness is not installed; install it with `pip install 'spikelm[eval]'`") from e


@lru_cache(maxsize=None)
def _build_class() -> type:
    """Define the adapter class; done on first use because its base class lives in lm_eval."""
    _import_lm_eval()
    from lm_eval.api.model import LM

    class _SpikelmLM(LM):
        """lm-eval model backed by a spikelm model (see the module docstring for ``model_args``)."""

        def __init__(
            self,
            path: str | None = None,
            model: nn.Module | None = None,
            encoding: str = "",
            calib_data: str = DEFAULT_CALIB_DATA,
            device: str | None = None,
            dtype: str | None = None,
            batch_size: int | str | None = 16,
            max_batch_size: int | None = None,
            prefix_eod: bool = True,
            state_reuse: bool = True,
            max_gen_toks: int = 256,
            tokenizer: Any | None = None,
            **unknown: Any,
        ) -> None:
            super().__init__()
            if unknown:
                raise ConfigError(
                    f"unknown spikelm model_args {sorted(unknown)}; known: path, encoding, calib_data, device, dtype, batch_size, "
                    "prefix_eod, state_reuse, max_gen_toks"
                )
            torch_dtype = None
            if dtype:
                if str(dtype) not in DTYPES:
                    raise ConfigError(f"model_args dtype={dtype!r} is not one of {', '.join(DTYPES)}")
                torch_dtype = DTYPES[str(dtype)]
            # Validated here, before any work, with the same names and messages as spikelm's --device.
            torch_device = resolve_device(str(device)) if device else None
            if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
                log.info("batch_size=%s: using 16 choices per forward call", batch_size)
                batch_size = 16
            try:
                n_batch = int(batch_size)
            except (TypeError, ValueError):
                n_batch = 0
            if n_batch < 1:
                raise ConfigError(f"model_args batch_size must be an integer >= 1 or auto, got {batch_size!r}")
            batch_size = n_batch
            if model is None:
                if not path:
                    raise ConfigError("the spikelm model needs a checkpoint: --model_args path=CHECKPOINT")
                model = load(str(path), device=torch_device or "cpu", dtype=torch_dtype)
            elif torch_device or torch_dtype:
                model = model.to(device=torch_device, dtype=torch_dtype)
            model = apply_encoding(model, str(encoding or ""), str(calib_data))
            self.model = model
            self.scorer = Scorer(model, tokenizer, batch_size=int(batch_size), state_reuse=bool(state_reuse),
                                 prefix_eod=bool(prefix_eod))
            self._device = self.scorer.device
            self.max_gen_toks = int(max_gen_toks)

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> Any:
            from lm_eval.utils import simple_parse_args_string

            return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

        @classmethod
        def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> Any:
            # The harness's CLI always passes its own batch_size / device (default 1 / None) next to
            # model_args; the base class would then see batch_size twice. model_args win.
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
            # lm_eval's --device defaults to "cuda": on a machine without CUDA, that default (not
            # a device the user wrote in model_args) falls back to the CPU.
            dev = str(extra.get("device", ""))
            if dev.startswith("cuda") and "device" not in arg_dict and not torch.cuda.is_available():
                log.warning("lm_eval --device %s: CUDA is not available here, evaluating on the CPU", dev)
                extra["device"] = "cpu"
            return cls(**{**extra, **arg_dict})

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.model, "tokenizer_name", "bytes"))

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            pairs = [tuple(r.args) for r in requests]
            # Requests of one document share a prefix (its few-shot context; for WinoGrande the
            # sentence before the blank). Unconditioned requests (empty context) get a group of
            # their own, since they share nothing beyond the end-of-document token.
            groups = [
                (r.task_name, r.doc_id, ctx == "") if r.doc_id is not None else ("context", ctx)
                for r, (ctx, _) in zip(requests, pairs)
            ]
            results = self.scorer.loglikelihood(pairs, groups=groups, progress=not disable_tqdm)
            for args, res in zip(pairs, results):
                self.cache_hook.add_partial("loglikelihood", args, res)
            return results

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            out = []
            for r in requests:
                (text,) = r.args
                ll, _ = self.scorer.rolling_loglikelihood(text)
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), ll)
                out.append(ll)
            return out

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            out = []
            for r in requests:
                context, gen_kwargs = r.args
                kw = dict(gen_kwargs or {})
                until = kw.pop("until", None) or []
                if isinstance(until, str):
                    until = [until]
                max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
                do_sample = bool(kw.pop("do_sample", False))
                temperature = float(kw.pop("temperature", 0.0) or 0.0) if do_sample else 0.0
                top_k = int(kw.pop("top_k", 0) or 0)
                top_p = float(kw.pop("top_p", 1.0) or 1.0)
                if kw:
                    log.debug("generate_until: ignoring generation kwargs %s", sorted(kw))
                text = self.scorer.generate(context, until=until, max_new_tokens=max_new, temperature=temperature,
                                            top_k=top_k, top_p=top_p)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                out.append(text)
            return out

    _SpikelmLM.__name__ = _SpikelmLM.__qualname__ = "SpikelmLM"
    _SpikelmLM.__module__ = __name__
    return _SpikelmLM


def register() -> type:
    """Register the ``spikelm`` model with lm-eval (idempotent) and return the adapter class."""
    cls = _build_class()
    # lm-eval imports its own model table only when its registry is empty; import it first so
    # that registering "spikelm" does not hide "hf" and the others from the same process.
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=cls)
    return cls


def __getattr__(name: str) -> Any:
    # ``SpikelmLM`` is created on first access, so importing this module does not import lm_eval.
    if name == "SpikelmLM":
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
