"""Commands on one model: ``info``, ``init``, ``convert``, ``generate``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..checkpoints import describe, n_params, save, save_official
from ..config import EncodingConfig, RWKV6Config
from ..convert import convert, encoders, preset_config
from ..data.text import calibration_batches
from ..errors import ConfigError
from ..evaluate.variants import apply_encoding
from ..generate import check_sampling, generate
from ..io import OutputExistsError, claim_dir
from ..models.rwkv6 import RWKV6
from ..models.quantized import weight_bits as weight_bits_of
from .options import BinaryEmbedding, Family, WeightBits, load_model, print_json, progress_bars

__all__ = ["cmd_info", "cmd_init", "cmd_convert", "cmd_generate"]


def cmd_info(path: str, json_: bool = False) -> int:
    """Print the layout, inferred configuration and parameter count of a checkpoint.

    Args:
        path: an official RWKV-6 .pth/.safetensors file, a Hugging Face folder, a SpikeGPT release .pth, or a spikelm folder.
        json_: print one JSON object instead of text.
    """
    info = describe(path)
    if json_:
        print_json(info)
        return 0
    print(f"{path}: {info['format']} layout, {info['tensors']} tensors ({', '.join(info['dtypes'])}), {info['parameters']:,} parameters")
    for k, v in info["config"].items():
        print(f"  {k:22s} {v}")
    return 0


def cmd_init(out: str, n_layer: int = 6, n_embd: int = 256, vocab_size: int = 257, head_size: int = 64,
             tokenizer: str = "bytes", seed: int = 0, official: bool = False, overwrite: bool = False) -> int:
    """Write a randomly initialised RWKV-6 (for tests, benchmarks, or training from scratch).

    Args:
        out: output folder (spikelm layout), or a .pth path with --official.
        n_layer: number of blocks.
        n_embd: model width C.
        vocab_size: vocabulary size V (257 for bytes, 65536 for the World tokenizer).
        head_size: head size N (64 in released models).
        tokenizer: tokenizer name stored in the config: bytes, world, or a tokenizer.json path.
        seed: random seed of the initialisation.
        official: write an official-layout .pth file instead of a spikelm folder.
        overwrite: replace an existing output (only spikelm's own files; never a folder of yours).
    """
    cfg = RWKV6Config(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, head_size=head_size, tokenizer=tokenizer)
    if official:
        p = Path(out)
        if p.is_dir():
            raise OutputExistsError(f"--official writes one .pth file; {out} is a folder: give a file path such as {p / 'model.pth'}")
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; choose another path or pass --overwrite")
    else:
        claim_dir(out, overwrite=overwrite)
    model = RWKV6(cfg).init_weights(seed)
    path = save_official(model, out) if official else save(model, out, overwrite=overwrite)
    print(f"wrote {path} ({n_params(model):,} parameters)")
    return 0


def cmd_convert(checkpoint: str, *, out: str, calib_data: str = "default", preset: str = "", encoding: str = "mhse",
                T: int = 1, layers: int | None = None, sites: str = "time_mix", calibration: str = "max",
                percentile: float = 99.99, granularity: str = "tensor", init_half: bool = False, n_int: int = 1,
                calib_batches: int = 8, calib_ctx: int = 256, binary_embedding: BinaryEmbedding = "auto", family: Family = "auto",
                weight_bits: WeightBits = "auto", device: str = "auto", dtype: str = "auto",
                overwrite: bool = False, progress: bool = True, json_: bool = False) -> int:
    """Convert a pretrained RWKV-6 into a spiking network and save it as a spikelm folder.

    Args:
        checkpoint: the ANN: official RWKV-6 .pth/.safetensors, Hugging Face folder, or spikelm folder.
        out: output folder (model.safetensors + config.json, with the calibrated scales); must not exist or be empty (see --overwrite).
        calib_data: text the spike scales are calibrated on (its train split): a corpus name or a text file.
        preset: a named configuration (SNN-RWKV-3, SNN-RWKV-4, SpikeRWKV-3L, SpikeRWKV-4L, SpikeRWKV-5L, spikelm-4L); overrides --encoding/--T/--layers.
        encoding: mhse (multi-head spike encoding) or rate (SNN-RWKV repetition coding).
        T: time steps per token (>= 1).
        layers: spike layers l of the multi-head encoding (>= 1; default 4 for mhse, 1 for rate).
        sites: time_mix (receptance/key/value/gate inputs, as in the paper) or all (also output, channel mix, LoRA).
        calibration: max or percentile of |x| per site, or mse: the clip whose spike code has the least squared error.
        percentile: the percentile used with --calibration percentile.
        granularity: tensor (one scale per site) or channel (one per input channel).
        init_half: start membranes at half the smallest weight (rounding instead of truncation).
        n_int: integer bits: the largest layer weight is 2**(n_int-1).
        calib_batches: number of calibration batches (4 sequences each).
        calib_ctx: tokens per calibration sequence.
        binary_embedding: SpikeGPT only: auto (a release file: on for the 77-character vocabulary only, as the public run code; a spikelm folder: as trained), on or off.
        family: auto (an RWKV-4-layout file is read as a SpikeGPT release), spikegpt, or rwkv4 (read it as the RWKV-4 ANN).
        weight_bits: precision of the weight matrices: 32 (float), 16 (fp16) or 8 (symmetric int8, one scale per output channel, dequantised in the forward), applied before calibration and saved as such (int8 plus scales); auto: as the checkpoint stores them.
        device: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N.
        dtype: auto (fp32 on the CPU, bf16 on CUDA), fp32, bf16 or fp16.
        overwrite: replace an existing output folder (only spikelm's own files in it; never the input).
        progress: show progress bars on stderr.
        json_: print one JSON object instead of text.
    """
    if preset:
        shaping = {"--encoding": encoding != "mhse", "--T": T != 1, "--layers": layers is not None,
                   "--init-half": init_half, "--n-int": n_int != 1}
        given = [flag for flag, set_ in shaping.items() if set_]
        if given:
            raise ConfigError(f"--preset {preset} sets the spike code; {', '.join(given)} would change it: "
                              "leave them out, or drop --preset and give the code in full")
        # how the scales are set is not part of the code: --calibration/--percentile/--granularity
        # apply on top of the preset (where given: the preset's own otherwise)
        enc = preset_config(preset, sites)
        over = {k: v for k, v, default in (("calibration", calibration, "max"), ("percentile", percentile, 99.99),
                                           ("granularity", granularity, "tensor")) if v != default}
        enc = EncodingConfig.from_dict({**enc.to_dict(), **over}) if over else enc
    else:
        if layers is None:
            layers = 1 if encoding == "rate" else 4
        enc = EncodingConfig(encoding=encoding, T=T, layers=layers, sites=sites, calibration=calibration,
                             percentile=percentile, granularity=granularity, init_half=init_half, n_int=n_int)
    claim_dir(out, overwrite=overwrite, inputs=(checkpoint,))
    model = load_model(checkpoint, device, dtype, binary_embedding, family, weight_bits)
    batches = calibration_batches(calib_data, model.tokenizer_name, calib_batches, 4, calib_ctx, progress=progress_bars(progress))
    convert(model, enc, batches)
    path = save(model, out, overwrite=overwrite)
    n_sites = sum(1 for _ in encoders(model))
    if json_:
        print_json({"checkpoint": checkpoint, "out": str(path), "encoding": enc.to_dict(), "sites": n_sites,
                    "weight_bits": weight_bits_of(model)})
    else:
        print(f"converted {checkpoint} -> {path}: {enc.encoding}, T={enc.T}, l={enc.layers}, {n_sites} encoded sites ({enc.sites}), "
              f"{weight_bits_of(model)}-bit weights")
    return 0


def _shown(text: str) -> str:
    """``text`` as the terminal can print it: argv bytes that were not UTF-8 (surrogate escapes) become U+FFFD."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate outside the escapes: generate() names it
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def cmd_generate(checkpoint: str, prompt: str = "The", max_tokens: int = 200, temperature: float = 1.0,
                 top_p: float = 0.85, top_k: int = 0, seed: int = 0, encoding: str = "", calib_data: str = "default",
                 binary_embedding: BinaryEmbedding = "auto", family: Family = "auto",
                device: str = "auto", dtype: str = "auto", json_: bool = False) -> int:
    """Generate text from a checkpoint, streaming tokens as they come.

    Args:
        checkpoint: official RWKV-6 .pth, Hugging Face folder, or spikelm folder (ANN, converted, SpikeGPT).
        prompt: text the generation continues (empty: start from the end-of-document token).
        max_tokens: number of new tokens (>= 1).
        temperature: softmax temperature (>= 0); 0 means greedy decoding.
        top_p: nucleus sampling mass, in (0, 1]; 1.0 disables it.
        top_k: keep only the k most likely tokens (>= 0; 0 disables it).
        seed: random seed, for reproducible samples.
        encoding: convert to spikes before generating: a preset name such as SpikeRWKV-4L (empty: as stored).
        calib_data: text the spike scales are calibrated on with --encoding (its train split): a corpus name or a text file.
        binary_embedding: SpikeGPT only: auto (a release file: on for the 77-character vocabulary only, as the public run code; a spikelm folder: as trained), on or off.
        family: auto (an RWKV-4-layout file is read as a SpikeGPT release), spikegpt, or rwkv4 (read it as the RWKV-4 ANN).
        device: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N.
        dtype: auto (fp32 on the CPU, bf16 on CUDA), fp32, bf16 or fp16.
        json_: print one JSON object (prompt, text, token ids, timings) instead of streaming.
    """
    if max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    check_sampling(temperature, top_k, top_p)
    model = apply_encoding(load_model(checkpoint, device, dtype, binary_embedding, family), encoding, calib_data)
    echoed = False

    def stream(piece: str) -> None:
        # The prompt is echoed with the first piece, after generate() has accepted it (a prompt
        # it refuses is never half-printed); shown as the generated text is (invalid UTF-8 -> U+FFFD).
        nonlocal echoed
        sys.stdout.write(piece if echoed else _shown(prompt) + piece)
        sys.stdout.flush()
        echoed = True

    res = generate(model, prompt, max_tokens, temperature, top_k, top_p, seed, on_text=None if json_ else stream)
    if not json_ and not echoed:
        stream("")
    if json_:
        print_json({"prompt": res.prompt, "text": res.text, "tokens": res.tokens, "prompt_tokens": res.prompt_tokens,
                    "seconds": round(res.seconds, 4), "first_token_seconds": round(res.first_token_seconds, 4),
                    "tokens_per_second": round(res.tokens_per_second, 2)})
    else:
        sys.stdout.write("\n")
        print(f"[{len(res.tokens)} tokens: the first after {res.first_token_seconds:.2f} s (the prompt, and one-off "
              f"costs such as a first call), then {res.tokens_per_second:.1f} tokens/s]", file=sys.stderr)
    return 0
