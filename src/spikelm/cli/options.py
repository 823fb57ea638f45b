"""The shared option vocabulary and the helpers every command uses to honour it.

Same names, meanings and defaults on every command that has the concept (a test holds them to it):

==================  ==========================================================================
``--device``        auto | cpu | cuda | cuda:N (default auto); an unavailable device is a named error
``--dtype``         auto | fp32 | bf16 | fp16 (default auto: fp32 on the CPU, bf16 on CUDA)
``--data``          a corpus name or a text file (default ``default``, the embedded Brown corpus)
``--split``         train | valid | test (default test); a text file is split as ``data prepare`` splits it
``--whole-file``    read a plain text file whole instead of one split of it
``--calib-data``    what spike scales are calibrated on (train split; default ``default``)
``--binary-embedding``  auto | on | off (default auto): SpikeGPT's binary embedding (auto: the public
                    run code's rule for a release file, the recorded setting for a spikelm folder)
``--family``        auto | spikegpt | rwkv4 (default auto): how an RWKV-4-layout file is read
``--progress``      progress bars on stderr (``--no-progress`` to hide them)
``--json``          one JSON object on stdout instead of text
``--weight-bits``   auto | 32 | 16 | 8 (default auto): the weight matrices stored at that precision
                    (:func:`spikelm.models.quantized.quantize_weights`, applied once the model is
                    loaded, before any conversion); auto = 8 where the command prices energy (the
                    like-for-like comparison), else as the checkpoint stores them
==================  ==========================================================================
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoints import load
from ..config import WEIGHT_BITS
from ..devices import resolve_device, resolve_dtype
from ..errors import ConfigError
from ..models.quantized import quantize_weights
from ..progress import Progress, ProgressFn

__all__ = ["SHARED_DEFAULTS", "BinaryEmbedding", "Family", "WeightBits", "load_model", "resolve_weight_bits",
           "progress_bars", "print_json", "WEIGHT_BITS_HELP"]

# The defaults a test checks on every command's parser.
SHARED_DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "dtype": "auto",
    "data": "default",
    "split": "test",
    "whole_file": False,
    "calib_data": "default",
    "progress": True,
    "json_": False,
    "binary_embedding": "auto",
    "family": "auto",
    "weight_bits": "auto",
}

# The words of the two loading options (the command signatures use these types).
BinaryEmbedding = Literal["auto", "on", "off"]
Family = Literal["auto", "spikegpt", "rwkv4"]
WeightBits = Literal["auto", "32", "16", "8"]

DEVICE_HELP = "auto (CUDA when available, else the CPU), cpu, cuda or cuda:N."
DTYPE_HELP = "auto (fp32 on the CPU, bf16 on CUDA), fp32, bf16 or fp16: weights and activations; WKV state and spike scales stay fp32."
DATA_HELP = "a corpus (default = the embedded Brown corpus, brown:PATH, enwik8:PATH, wikitext-103:FOLDER) or a text file or folder."
SPLIT_HELP = "train, valid or test; a plain text file is split exactly as `spikelm data prepare` splits it (last ~5 percent test, the 5 percent before it valid)."
WHOLE_FILE_HELP = "read a plain text file whole instead of one split of it (it may then include training text)."
CALIB_HELP = "text the spike scales are calibrated on (its train split): a corpus name or a text file."
PROGRESS_HELP = "show progress bars on stderr."
JSON_HELP = "print one JSON object instead of text."
BINARY_EMBEDDING_HELP = ("SpikeGPT only: auto (release file: on for the 77-character vocabulary only, as the public run code; "
                         "spikelm folder: as trained), on or off.")
WEIGHT_BITS_HELP = ("precision of the weight matrices: 32 (float), 16 (fp16) or 8 (symmetric int8, one scale per output "
                    "channel, dequantised in the forward: accuracy is measured at that precision); auto: 8 where the "
                    "command prices energy (energy, sweep --energy, demo: like for like), else as the checkpoint stores them.")
FAMILY_HELP = "auto (an RWKV-4-layout file is a SpikeGPT release), spikegpt, or rwkv4 (load it as the RWKV-4 ANN)."


def resolve_weight_bits(weight_bits: str, prices_energy: bool = False) -> int | None:
    """The width ``--weight-bits`` asks for: 32, 16 or 8; None for "as stored" ("auto" on a command
    that prices no energy; "auto" where it does means 8, the like-for-like comparison)."""
    if weight_bits == "auto":
        return 8 if prices_energy else None
    try:
        bits = int(weight_bits)
    except (TypeError, ValueError):
        bits = 0
    if bits not in WEIGHT_BITS:
        raise ConfigError(f"--weight-bits takes auto, 32, 16 or 8, got {weight_bits!r}")
    return bits


def load_model(checkpoint: str, device: str, dtype: str, binary_embedding: str = "auto", family: str = "auto",
               weight_bits: str = "auto", prices_energy: bool = False) -> nn.Module:
    """Load a checkpoint on the ``--device`` / ``--dtype`` the user named (validated first), with
    ``--binary-embedding`` / ``--family`` ("auto": what the file says), its weights stored at
    ``--weight-bits`` (:func:`resolve_weight_bits`; before any conversion, so spike scales are
    calibrated on the quantised model)."""
    bits = resolve_weight_bits(weight_bits, prices_energy)  # checked before the load
    dev = resolve_device(device)
    model = load(checkpoint, device=dev, dtype=resolve_dtype(dtype, dev),
                 binary_embedding=None if binary_embedding == "auto" else binary_embedding,
                 family=None if family == "auto" else family)
    if bits is not None:
        quantize_weights(model, bits)
    return model


def progress_bars(enabled: bool) -> ProgressFn | None:
    """A progress callback that draws one tqdm bar per task on stderr (None when disabled)."""
    if not enabled:
        return None
    bars: dict[str, tqdm] = {}

    def show(ev: Progress) -> None:
        bar = bars.get(ev.desc)
        if bar is None:
            bar = bars[ev.desc] = tqdm(total=ev.total, unit=ev.unit, desc=ev.desc, dynamic_ncols=True, leave=False,
                                       unit_scale=ev.unit in ("B", "tok"), file=sys.stderr,
                                       bar_format=None if ev.unit != "s" else "{desc}: {percentage:3.0f}%|{bar}| "
                                       "{n:.0f}/{total:.0f} s elapsed of the time budget{postfix}")
        if ev.total is not None and bar.total != ev.total:
            bar.total = ev.total
        bar.n = ev.done
        if ev.postfix:
            bar.set_postfix(ev.postfix, refresh=False)
        bar.refresh()
        if ev.finished:
            bar.close()
            del bars[ev.desc]

    return show


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)
