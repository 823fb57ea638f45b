"""Shared by tests/spiking/test_neuron_scan.py (Triton's interpreter on CPU) and tests/gpu/test_cuda.py
(compiled kernels on CUDA): the Triton neuron scan against ``multi_step_reference``.

Run as a script (with ``TRITON_INTERPRET=1``) it runs every case on CPU and prints one JSON line.
"""

from __future__ import annotations

import json

import torch

from spikelm.spiking.neurons import IFNeuron, LIFNeuron, set_scan_backend

NEURONS = {
    "if": lambda: IFNeuron(threshold=0.75),
    "if-detach": lambda: IFNeuron(threshold=1.0, detach_reset=True),
    "lif-zero": lambda: LIFNeuron(beta=0.5),
    "lif-zero-detach": lambda: LIFNeuron(beta=0.5, detach_reset=True),
    "lif-subtract": lambda: LIFNeuron(beta=0.3, reset="subtract"),
    "lif-vreset": lambda: LIFNeuron(beta=0.7, v_reset=-0.5),
}


def compare(neuron, dtype=torch.float32, shape=(3, 17, 6), dim=1, with_v0=True, device="cpu") -> dict:
    """Triton scan vs the autograd loop: spikes and final membrane (bit for bit in fp32; in
    bf16/fp16 the kernel's state is fp32, so it equals the fp32 loop on the rounded inputs) and
    the gradients of a random loss through both outputs, as a JSON-able verdict."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g) * 1.5 + 0.6
    v_shape = list(shape)
    del v_shape[dim]
    v0 = torch.randn(*v_shape, generator=g) * 0.3 if with_v0 else None
    w_s, w_v = torch.randn(*shape, generator=g), torch.randn(*v_shape, generator=g)
    x, w_s, w_v = x.to(device, dtype), w_s.to(device), w_v.to(device)
    v0 = v0.to(device, dtype) if v0 is not None else None
    out = {}
    for name, backend, xd in (("scan", "triton", dtype), ("ref", None, torch.float32)):
        xi = x.detach().to(xd).requires_grad_()
        vi = v0.detach().to(xd).requires_grad_() if v0 is not None else None
        if backend:
            set_scan_backend(neuron, backend)
            s, v = neuron.multi_step(xi, vi, dim=dim)
        else:
            s, v = neuron.multi_step_reference(xi, vi, dim=dim)
        ((s.float() * w_s).sum() + (v.float() * w_v).sum()).backward()
        out[name] = (s.detach().float(), v.detach(), xi.grad.float(), vi.grad.float() if vi is not None else None)
    with torch.no_grad():  # the no-graph launch (no u stored)
        s_n, v_n = neuron.multi_step(x, v0, dim=dim)
    (s_k, v_k, gx_k, gv_k), (s_r, v_r, gx_r, gv_r) = out["scan"], out["ref"]
    grad_err = float((gx_k - gx_r).abs().max() / gx_r.abs().max())
    if gv_r is not None:
        grad_err = max(grad_err, float((gv_k - gv_r).abs().max() / gv_r.abs().max()))
    return {
        "spike_rate": float(s_r.mean()),
        "spikes_equal": bool(torch.equal(s_k, s_r)) and bool(torch.equal(s_n.float(), s_r)),
        "v_equal": bool(torch.equal(v_k, v_r.to(dtype))) and bool(torch.equal(v_n, v_k)),
        # within one unit in the last place of dtype (Triton's interpreter rounds fp32 -> bf16 towards zero)
        "v_within_ulp": bool(((v_k.float() - v_r).abs() <= v_r.abs() * torch.finfo(dtype).eps).all()),
        "dtype_kept": s_k is not None and v_k.dtype == dtype,
        "grad_rel_err": grad_err,
    }


CASES = {f"{name}-fp32": dict(neuron=name) for name in NEURONS} | {
    "lif-zero-bf16": dict(neuron="lif-zero", dtype="bfloat16"),
    "if-fp16": dict(neuron="if", dtype="float16"),
    "lif-zero-dim0-fresh": dict(neuron="lif-zero", shape=(9, 4, 5), dim=0, with_v0=False),
    "if-dimlast": dict(neuron="if", shape=(2, 3, 11), dim=-1),
    "if-T1": dict(neuron="if", shape=(2, 1, 7)),
}


# fp32 spikes/membranes are exact; gradients only differ in the order of the fp32 additions
# (the kernel's reverse scan keeps an fp32 carry, and P, Q come from u stored in the input dtype)
GRAD_TOL = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}


def run_case(spec: dict, device: str = "cpu") -> dict:
    spec = dict(spec)
    neuron = NEURONS[spec.pop("neuron")]()
    dtype = getattr(torch, spec.pop("dtype", "float32"))
    return compare(neuron, dtype=dtype, device=device, **spec)


if __name__ == "__main__":  # the interpreted run: tests/spiking/test_neuron_scan.py sets TRITON_INTERPRET=1
    torch.set_num_threads(1)
    print(json.dumps({case: run_case(spec) for case, spec in CASES.items()}))
