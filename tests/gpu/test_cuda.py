"""GPU checks (``make test-gpu``): the CUDA paths against the CPU reference. Skipped without CUDA.

CI has no GPU; these run wherever one is present (a lent GPU machine, a user's workstation).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuron_scan_helpers import CASES, GRAD_TOL, run_case
from wkv4_triton_helpers import CASES as WKV4_CASES
from wkv4_triton_helpers import TOL as WKV4_TOL
from wkv4_triton_helpers import run_case as run_wkv4_case
from wkv_fla_helpers import CASES as FLA_CASES
from wkv_fla_helpers import run_case as run_fla_case
from spikelm.runargs import TrainArgs
from spikelm.convert import convert, preset_config
from spikelm.ops.wkv6 import wkv6, wkv6_naive
from spikelm.models.spikegpt import SpikeGPT, SpikeGPTConfig
from spikelm.ops import neuron_scan, wkv_fla
from spikelm.spiking.neurons import set_scan_backend
from spikelm.testing import make_rwkv6

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parents[2]


def _batches(n=2, B=2, T=64, V=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (B, T), generator=g) for _ in range(n)]


def test_wkv6_cuda_path_matches_the_loop():
    g = torch.Generator().manual_seed(0)
    B, T, H, N = 2, 200, 4, 64
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    logw = -torch.rand(B, T, H, N, generator=g) * 4
    u = torch.randn(H, N, generator=g)
    y0, s0 = wkv6_naive(r.double(), k.double(), v.double(), logw.double(), u.double())
    dev = [t.cuda() for t in (r, k, v, logw, u)]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            y1, s1 = wkv6(*dev)  # CUDA inputs: fla's recurrent kernel where installed, else the float32 chunked form
        torch.testing.assert_close(y1.double().cpu(), y0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s1.double().cpu(), s0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-1), (torch.float16, 2e-2)])
def test_rwkv6_on_cuda_matches_cpu(dtype, tol):
    m = make_rwkv6(n_layer=2, n_embd=128, head_size=64)
    x = _batches(1, T=100)[0]
    with torch.no_grad():
        ref, _ = m(x)
        got, _ = m.to("cuda", dtype)(x.cuda())
    err = (got.float().cpu() - ref).abs().max() / ref.abs().max()
    assert err < tol, f"{dtype}: relative error {err:.3g}"


def test_converted_model_on_cuda_keeps_fp32_scales_and_matches_cpu():
    m = make_rwkv6(n_layer=2, n_embd=128, head_size=64, seed=1)
    convert(m, preset_config("spikelm-4L"), _batches())
    x = _batches(1, T=48, seed=2)[0]
    with torch.no_grad():
        ref, _ = m(x)
        gpu = m.to("cuda", torch.bfloat16)
        assert all(e.scale.dtype == torch.float32 for n, e in gpu.named_modules() if hasattr(e, "scale") and isinstance(e.scale, torch.Tensor))
        got, _ = gpu(x.cuda())
    assert torch.isfinite(got).all()
    assert (got.float().cpu() - ref).abs().max() / ref.abs().max() < 0.2


needs_triton = pytest.mark.skipif(not neuron_scan.HAS_TRITON, reason="needs triton (pip install spikelm[gpu])")


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_triton_neuron_scan_on_cuda(case):
    """The compiled kernels (no FMA contraction) against the autograd loop on the GPU: spikes and
    membranes bit for bit, in bf16/fp16 too (fp32 state = the fp32 loop on the rounded inputs)."""
    r = run_case(CASES[case], device="cuda")
    assert 0 < r["spike_rate"] < 1
    assert r["spikes_equal"] and r["v_equal"] and r["dtype_kept"], r
    assert r["grad_rel_err"] < GRAD_TOL[CASES[case].get("dtype", "float32")], r


@needs_triton
def test_spikegpt_triton_scan_matches_torch_loop_on_cuda():
    """A SpikeGPT forward and backward on CUDA: the Triton scan (auto) against the PyTorch loop."""
    torch.manual_seed(0)
    m = SpikeGPT(SpikeGPTConfig(vocab_size=257, n_layer=2, n_embd=64, ctx_len=128)).init_weights(0).cuda()
    x = _batches(1, T=128)[0].cuda()
    out = {}
    for backend in ("torch", "auto"):
        set_scan_backend(m, backend)
        m.zero_grad()
        logits, _ = m(x)
        logits.float().square().mean().backward()
        out[backend] = (logits.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None])
    (l_t, g_t), (l_a, g_a) = out["torch"], out["auto"]
    assert torch.equal(l_a, l_t)  # fp32: the same spikes, so the same logits bit for bit
    for a, t in zip(g_a, g_t):
        torch.testing.assert_close(a, t, rtol=1e-4, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("case", list(WKV4_CASES))
def test_triton_wkv4_on_cuda(case):
    """The compiled WKV4 kernels against the autograd loop on the CPU: outputs, states, gradients."""
    r = run_wkv4_case(WKV4_CASES[case], device="cuda")
    tol = WKV4_TOL[WKV4_CASES[case].get("dtype", "float32")]
    assert r["dtype_kept"] and r["nograd_equal"] and r["y"] < tol and r["state"] < 2e-5, r
    assert all(v < tol for v in r["grads"].values()), r


@needs_triton
def test_spikegpt_triton_wkv4_matches_parallel_form_on_cuda():
    """A SpikeGPT forward and backward on CUDA in fp32: WKV4 through the Triton kernels (auto)
    against the parallel form (the PyTorch LIF loop on both; a WKV value an ulp away can flip a
    spike only where a membrane sits within 1e-7 of the threshold)."""
    m = SpikeGPT(SpikeGPTConfig(vocab_size=257, n_layer=2, n_embd=64, ctx_len=128)).init_weights(0).cuda()
    set_scan_backend(m, "torch")
    x = _batches(1, T=128)[0].cuda()
    out = {}
    for impl in ("parallel", "auto"):
        m.wkv_impl = impl
        m.zero_grad()
        logits, _ = m(x)
        logits.float().square().mean().backward()
        out[impl] = (logits.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None])
    (l_p, g_p), (l_a, g_a) = out["parallel"], out["auto"]
    torch.testing.assert_close(l_a, l_p, rtol=1e-4, atol=1e-4)
    for a, p in zip(g_a, g_p):
        torch.testing.assert_close(a, p, rtol=1e-3, atol=1e-5)


needs_fla = pytest.mark.skipif(not wkv_fla.HAS_FLA, reason="needs flash-linear-attention (pip install spikelm[gpu])")


@needs_fla
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(FLA_CASES))
def test_fla_chunk_against_the_float64_loop_on_cuda(case, dtype):
    """fla's chunked kernels (training) through spikelm's wkv6/wkv7: output, final state from an
    initial state, and every gradient, against the float64 loop; fla's own tests accept about
    5e-3, bf16 inputs round the output to bf16."""
    r = run_fla_case(FLA_CASES[case], device="cuda", impl="fla_chunk", dtype=dtype)["fla_chunk"]
    tol = 1e-2 if dtype == "bfloat16" else 5e-3
    assert r["y"] < tol and r["state"] < tol and r["grads"] < tol, r


@needs_fla
@pytest.mark.parametrize("case", list(FLA_CASES))
def test_fla_recurrent_against_the_float64_loop_on_cuda(case):
    """fla's recurrent kernels (scoring): the loop's arithmetic in fp32."""
    r = run_fla_case(FLA_CASES[case], device="cuda", impl="fla_recurrent")["fla_recurrent"]
    assert r["y"] < 1e-4 and r["state"] < 1e-4, r


@needs_fla
@pytest.mark.parametrize("kind", ["rwkv6", "rwkv7"])
def test_models_take_fla_on_cuda_and_agree_with_the_reference(kind, monkeypatch):
    """auto on CUDA: fla's chunked kernels under a gradient, its recurrent one without; the model's
    logits and gradients against the PyTorch chunked form (the reference), fp32 and bf16 autocast."""
    from spikelm.checkpoints import build_model

    taken = []
    for name in ("wkv6_fla", "wkv7_fla"):  # patched where the dispatchers look them up
        mod = importlib.import_module(f"spikelm.ops.{name[:4]}")
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, **k: (taken.append(k["mode"]), _real(*a, **k))[1])
    if kind == "rwkv6":
        m = make_rwkv6(n_layer=2, n_embd=128, head_size=64)
    else:
        m = build_model({"kind": "rwkv7", "vocab_size": 257, "n_layer": 2, "n_embd": 128, "tokenizer": "bytes"}).init_weights(0)
        with torch.no_grad():  # the scratch init zeros the output projections: every WKV must reach the logits
            for p in m.parameters():
                if p.abs().max() == 0:
                    p.normal_(0.0, 0.05)
    m = m.cuda()
    x = _batches(1, T=200)[0].cuda()
    ref_impl = "chunked_fp32" if kind == "rwkv6" else "chunked"
    for amp in (None, torch.bfloat16):
        out = {}
        for impl in (ref_impl, "auto"):
            m.wkv_impl = impl
            m.zero_grad()
            with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
                logits, _ = m(x)
            logits.float().square().mean().backward()
            out[impl] = (logits.float().detach(), [p.grad.float().clone() for p in m.parameters() if p.grad is not None])
            with torch.no_grad(), torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
                scored, _ = m(x)
            out[impl + "-scored"] = scored.float()
        (l_r, g_r), (l_a, g_a) = out[ref_impl], out["auto"]
        tol = 5e-2 if amp is not None else 5e-3  # under autocast fla's chunked products run in bf16
        assert (l_a - l_r).abs().max() / l_r.abs().max() < tol
        assert (out["auto-scored"] - out[ref_impl + "-scored"]).abs().max() / l_r.abs().max() < tol
        for a, b in zip(g_a, g_r):
            assert (a - b).abs().max() <= tol * b.abs().max() + 1e-6
    assert "chunk" in taken and "recurrent" in taken, taken


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_steps_on_cuda(tmp_path, precision):
    from spikelm.train import train

    args = TrainArgs(model={"kind": "rwkv6", "n_layer": 1, "n_embd": 64, "head_size": 32}, data="default",
                     tokenizer="bytes", ctx_len=64, batch_size=8, grad_accum=2, max_steps=6, warmup_steps=2,
                     eval_every=0, eval_batches=2, save_every=3, out_dir=str(tmp_path / "run"), device="cuda",
                     precision=precision)
    res = train(args)
    assert res.steps == 6 and res.val_loss is not None and res.val_loss < 6.0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_process_nccl_training(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "spikelm", "train",
           str(REPO / "configs" / "rwkv6-tiny.yaml"), "--device", "cuda", "--max-steps", "6", "--out-dir",
           str(tmp_path / "ddp"), "--no-progress"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()
