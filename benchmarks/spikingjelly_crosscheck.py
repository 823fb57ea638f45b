"""Cross-check spikelm's operation counts against SpikingJelly 2.x's operation counter.

SpikingJelly's ``op_counter`` (``ACCounter``, ``SynOpCounter``, ``MACCounter`` under a
``DispatchCounterMode``) counts what the aten products it intercepts do: a product whose input is
a binary tensor costs one accumulate per nonzero input per output, any other one ``m n k`` MACs.
It never sees spikes inside spikelm's converted model (a spiking linear layer there multiplies the
spikes' decoded value, which is the same arithmetic), so this script hands it the spikes
themselves, layer by layer, on the same converted model and the same tokens:

* for every ``nn.Linear`` of the converted model its input is captured during one forward pass;
* a spike-driven layer's input is encoded by the step-by-step IF cascade (``mhse_simulate``, the
  reference), and every (time step, spike layer) slice is multiplied by the layer's weight as a
  binary tensor, the positive and the negative values (the sign flag) apart; SpikingJelly counts
  the accumulates and synaptic operations of those products;
* a dense layer's real-valued input is multiplied as it is; SpikingJelly counts its MACs.

The table sets these beside spikelm's own rows (``EnergyCounter``: spikes counted from the closed
form at the encoders' observation points). Equal counts are the check: both count one accumulate
per spike per output and ``C_in C_out`` MACs per token of a dense layer. What SpikingJelly does not
count (and spikelm does): the encoders' neuron updates, the bare LoRA matmuls, WKV, norms and the
other elementwise work, memory.

    python benchmarks/spikingjelly_crosscheck.py CHECKPOINT [--settings SpikeRWKV-4L:all,SNN-RWKV-4:time_mix --tokens 256 --weight-bits 8]

Needs ``pip install spikingjelly --no-deps`` (2.x; it must not change torch).
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

import torch
import torch.nn.functional as F
from torch import nn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="an RWKV-6 (or RWKV-7) ANN: spikelm folder or official file")
    ap.add_argument("--settings", default="SpikeRWKV-4L:all,SNN-RWKV-4:time_mix",
                    help="comma-separated PRESET:SITES pairs, each converted from the checkpoint and checked")
    ap.add_argument("--tokens", type=int, default=256, help="tokens of the Brown test split")
    ap.add_argument("--weight-bits", type=int, default=8, choices=(32, 16, 8))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    try:
        import spikingjelly.activation_based.op_counter  # noqa: F401
    except ImportError:
        print("needs SpikingJelly 2.x: pip install spikingjelly --no-deps", file=sys.stderr)
        return 2

    from spikelm.checkpoints import load
    from spikelm.convert import apply_preset
    from spikelm.data.text import calibration_batches, split_tokens
    from spikelm.energy.report import count_model
    from spikelm.models.quantized import QuantizedMatrix, quantize_weights
    from spikelm.spiking.encoding import mhse_simulate
    from spikelm.spiking.layers import SpikingLinear

    torch.set_num_threads(args.threads)
    print(f"SpikingJelly {version('spikingjelly')} op_counter (ACCounter, SynOpCounter, MACCounter "
          "under DispatchCounterMode) against spikelm's EnergyCounter")
    ok = True
    for setting in args.settings.split(","):
        preset, _, sites = setting.strip().partition(":")
        ok &= check(args.checkpoint, preset, sites or "all", args.tokens, args.weight_bits)
    return 0 if ok else 1


def check(checkpoint: str, preset: str, sites: str, n_tokens: int, weight_bits: int) -> bool:
    """One converted model: spikelm's rows against SpikingJelly's counts, printed as a table."""
    from spikingjelly.activation_based.op_counter import ACCounter, DispatchCounterMode, MACCounter, SynOpCounter

    from spikelm.checkpoints import load
    from spikelm.convert import apply_preset
    from spikelm.data.text import calibration_batches, split_tokens
    from spikelm.energy.report import count_model
    from spikelm.models.quantized import QuantizedMatrix, quantize_weights
    from spikelm.spiking.encoding import mhse_simulate
    from spikelm.spiking.layers import SpikingLinear

    model = quantize_weights(load(checkpoint), weight_bits)
    apply_preset(model, preset, calibration_batches("default", model.tokenizer_name), sites)
    tokens = split_tokens("default", "test", model.tokenizer_name, max_tokens=n_tokens).tokens
    counts = count_model(model, tokens, chunk=len(tokens))

    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: inputs.__setitem__(name, a[0].detach().reshape(-1, a[0].shape[-1]).clone())))
    with torch.no_grad():
        model(torch.tensor([list(tokens)]))
    for h in handles:
        h.remove()

    print()
    print(f"model: {checkpoint}, {preset} at {sites} sites, {weight_bits}-bit weights; {len(tokens)} tokens of the Brown "
          f"test split; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print()
    print("| linear layer | C_in x C_out | input | spikelm AC | SpikingJelly AC | SpikingJelly SynOps | spikelm MAC "
          "| SpikingJelly MAC | equal |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    tot = {"ours_ac": 0, "sj_ac": 0, "sj_syn": 0, "ours_mac": 0, "sj_mac": 0}
    all_equal = True
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or name not in inputs:
            continue
        x = inputs[name]
        w = mod.weight.dequantized(torch.float32) if isinstance(mod.weight, QuantizedMatrix) else mod.weight.float()
        if isinstance(mod, SpikingLinear):
            enc = mod.encoder
            _, _, spikes, flags = mhse_simulate(x.float(), enc.scale.float(), **enc.encode_args())
            # every (step, layer) slice as two binary tensors: the positive values' spikes and the
            # negative ones' (the sign flag makes those accumulates subtract), made before counting
            products = [(s & sign).float() for s in spikes.reshape(-1, *x.shape) for sign in (~flags, flags)]
            kind = f"spikes T={enc.T} l={enc.encode_args()['layers']}"
        else:
            products = [x.float()]
            kind = "dense"
        ac, syn, mac = ACCounter(), SynOpCounter(), MACCounter()
        with torch.no_grad(), DispatchCounterMode([ac, syn, mac]):
            for p in products:
                F.linear(p, w)
        row = counts.rows[name]
        ours_ac, ours_mac = row.ops["ac"], row.ops["mac"]
        sj_ac, sj_syn, sj_mac = ac.get_total(), syn.get_total(), mac.get_total()
        equal = ours_ac == sj_ac == sj_syn and ours_mac == sj_mac
        all_equal &= equal
        for k, v in zip(tot, (ours_ac, sj_ac, sj_syn, ours_mac, sj_mac)):
            tot[k] += v
        print(f"| {name} | {mod.in_features}x{mod.out_features} | {kind} | {ours_ac:,} | {sj_ac:,} | {sj_syn:,} | "
              f"{ours_mac:,} | {sj_mac:,} | {'yes' if equal else 'NO'} |")
    print(f"| **total** | | | {tot['ours_ac']:,} | {tot['sj_ac']:,} | {tot['sj_syn']:,} | {tot['ours_mac']:,} | "
          f"{tot['sj_mac']:,} | {'yes' if all_equal else 'NO'} |")
    print()
    print("every linear layer's accumulates and MACs equal SpikingJelly's" if all_equal else
          "SOME COUNTS DIFFER (see the rows marked NO)")
    return all_equal


if __name__ == "__main__":
    sys.exit(main())
