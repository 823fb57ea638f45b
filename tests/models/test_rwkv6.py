"""RWKV-6: same logits as the `rwkv` pip package; parallel == recurrent; loading round trips."""

from __future__ import annotations

import os

import pytest
import torch

import spikelm
from conftest import make_rwkv6
from spikelm.checkpoints import save_official
from spikelm.models import rwkv6 as rwkv6_module
from spikelm.models.rwkv6 import Block, TimeMix
from spikelm.ops.linear import Linear
from spikelm.ops import cpu_kernels

needs_kernels = pytest.mark.skipif(cpu_kernels.kernel() is None, reason="no C++ compiler / ninja to build the kernels")


def _reference(path):
    os.environ["RWKV_JIT_ON"] = "0"
    os.environ["RWKV_CUDA_ON"] = "0"
    rwkv_model = pytest.importorskip("rwkv.model")
    return rwkv_model.RWKV(model=str(path), strategy="cpu fp32", verbose=False)


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(
    "n_layer,n_embd,head_size,vocab,T",
    [(2, 64, 16, 257, 37), (3, 128, 64, 300, 20), (1, 192, 32, 65536, 9)],
)
def test_matches_rwkv_package(tmp_path, n_layer, n_embd, head_size, vocab, T):
    model = make_rwkv6(n_layer=n_layer, n_embd=n_embd, head_size=head_size, vocab_size=vocab, seed=n_layer)
    path = save_official(model, tmp_path / "m.pth")
    ref = _reference(path)
    tokens = torch.randint(0, vocab, (T,), generator=torch.Generator().manual_seed(1)).tolist()

    ref_logits, ref_state = ref.forward(tokens, None, full_output=True)
    import spikelm

    ours = spikelm.load(path)
    with torch.no_grad():
        logits, state = ours(torch.tensor([tokens]))
    assert _max_rel(logits[0], ref_logits.float()) <= 1e-4

    # token by token, both carrying state
    with torch.no_grad():
        st, rst = None, None
        for i, t in enumerate(tokens):
            lo, st = ours(torch.tensor([[t]]), st)
            rlo, rst = ref.forward([t], rst)
            assert _max_rel(lo[0, 0], rlo.float()) <= 1e-4, f"token {i}"


def test_parallel_equals_recurrent(tiny_rwkv6):
    idx = torch.randint(0, 257, (2, 45), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, s_full = tiny_rwkv6(idx)
        st = None
        outs = []
        for chunk in (idx[:, :7], idx[:, 7:8], idx[:, 8:40], idx[:, 40:]):
            lo, st = tiny_rwkv6(chunk, st)
            outs.append(lo)
        step = torch.cat(outs, 1)
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)
    for a, b in zip(s_full, st):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_last_only(tiny_rwkv6):
    idx = torch.randint(0, 257, (1, 10))
    with torch.no_grad():
        full, _ = tiny_rwkv6(idx)
        last, _ = tiny_rwkv6(idx, last_only=True)
    assert last.shape == (1, 1, 257)
    torch.testing.assert_close(last[:, 0], full[:, -1])


@pytest.mark.parametrize("T", [1, 2, 3, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_last_only_trims_the_last_block_and_keeps_the_state(T, dtype):
    """``last_only`` computes the last block's gate, output, and channel mix on the positions the last
    logits need: the same logits and the same state as the whole forward."""
    model = make_rwkv6(n_layer=3, n_embd=64, head_size=16, seed=4).to(dtype)
    idx = torch.randint(0, 257, (2, T), generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        state = model(idx[:, :1])[1]  # a non-zero state in front
        full, s_full = model(idx, state)
        last, s_last = model(idx, state, last_only=True)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    assert last.shape == (2, 1, 257)
    torch.testing.assert_close(last[:, 0].float(), full[:, -1].float(), **tol)
    for a, b in zip(s_full, s_last):
        for x, y in zip(a, b):
            torch.testing.assert_close(x.float(), y.float(), **tol)


def test_wkv_parameters_stay_float32_in_a_low_precision_model(tmp_path):
    """time_decay, time_faaaa, time_state and ln_x keep their float32 values through a cast, a move
    and a load in bf16 (as RWKV-LM and the rwkv package keep them); everything else takes the dtype."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=5, has_time_state=True)
    with torch.no_grad():
        for blk in model.blocks:
            blk.att.time_state.normal_()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    keep = tuple(TimeMix.FLOAT32_PARAMS)

    def check(m, dtype):
        for name, p in m.named_parameters():
            if name.split(".att.", 1)[-1] in keep:
                assert p.dtype == torch.float32 and torch.equal(p, ref[name]), name
            else:
                assert p.dtype == dtype, name

    check(model.bfloat16(), torch.bfloat16)
    check(model.to("cpu", torch.float16), torch.float16)
    path = save_official(make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=5), tmp_path / "m.pth")
    ref = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=5).state_dict()
    loaded = spikelm.load(path, dtype=torch.bfloat16)
    for name, p in loaded.named_parameters():
        if name.split(".att.", 1)[-1] in keep:
            assert p.dtype == torch.float32 and torch.equal(p, ref[name]), name
    with torch.no_grad():
        loaded(torch.randint(0, 257, (1, 5)))


def _modules_only(monkeypatch):
    """Make every block take its modules' forward (the compiled step's twin)."""
    monkeypatch.setattr(Block, "_compiled_step", lambda self, x, state: None)


@needs_kernels
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("head_size", [16, 64])
def test_compiled_decoding_step_equals_the_modules(monkeypatch, dtype, tol, head_size):
    """One token through the compiled block step against the modules' forward: logits and every
    state, from a non-zero state, batch 2, layer 0's ln0, a trained initial state. In bf16/fp16 the
    step keeps float32 between its products where the modules round to the dtype."""
    model = make_rwkv6(n_layer=2, n_embd=128, head_size=head_size, seed=6, has_time_state=True).to(dtype)
    idx = torch.randint(0, 257, (2, 5), generator=torch.Generator().manual_seed(1))
    calls = []
    real = Block._compiled_step
    monkeypatch.setattr(Block, "_compiled_step", lambda self, x, s: calls.append(1) or real(self, x, s))
    with torch.inference_mode():
        _, state = model(idx[:, :4])
        before = [[t.clone() for t in layer] for layer in state]
        got, s_got = model(idx[:, 4:], state)
        assert len(calls) == 2  # one per block, for the one-token call only
        with monkeypatch.context() as m:
            _modules_only(m)
            ref, s_ref = model(idx[:, 4:], state)
    rel = lambda a, b: ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()  # noqa: E731
    assert rel(got, ref) < tol
    for a, b in zip(s_got, s_ref):
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and x.shape == y.shape and rel(x, y) < tol
    assert all(torch.equal(a, b) for la, lb in zip(state, before) for a, b in zip(la, lb))  # the input state is untouched


@needs_kernels
def test_compiled_decoding_step_only_where_it_computes_the_same(monkeypatch):
    """The modules' forward wherever the step would differ or skip something: a gradient possible,
    CPU autocast, a hook on any module (an energy counter's), a converted block, the kernels off."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=7)
    tok = torch.randint(0, 257, (1, 1))
    step = Block._compiled_step
    used = []
    monkeypatch.setattr(Block, "_compiled_step", lambda self, x, s: used.append(r := step(self, x, s) is not None) or
                        (step(self, x, s) if r else None))

    def takes(**kw):
        used.clear()
        with torch.inference_mode(kw.get("inference", True)):
            model(tok)
        return used == [True, True]

    assert takes()
    assert not takes(inference=False)  # a gradient is possible
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not takes()
    h = model.blocks[1].att.key.register_forward_hook(lambda *a: None)
    used.clear()
    with torch.inference_mode():
        model(tok)
    assert used == [True, False]  # the hooked block only
    h.remove()
    from spikelm.convert import apply_preset

    spiking = apply_preset(model, "SpikeRWKV-4L", [torch.randint(0, 257, (1, 8))], sites="time_mix")
    used.clear()
    with torch.inference_mode():
        spiking(tok)
    assert used == [False, False]
    monkeypatch.setattr(rwkv6_module, "cpu_op", lambda name: None)
    assert not takes()


@needs_kernels
def test_compiled_decoding_step_follows_swapped_parameters_and_modules(monkeypatch):
    """The step's parameter list is kept between calls: a parameter swapped by
    load_state_dict(assign=True), or a module swapped for another, must be seen at the next call."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=8)
    other = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=9)
    idx = torch.randint(0, 257, (1, 4), generator=torch.Generator().manual_seed(2))

    def both():
        with torch.inference_mode():
            _, st = model(idx[:, :3])
            got = model(idx[:, 3:], st)[0]
            with monkeypatch.context() as m:
                _modules_only(m)
                ref = model(idx[:, 3:], st)[0]
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
        return got

    first = both()
    model.load_state_dict(other.state_dict(), assign=True)
    assert not torch.allclose(both(), first)
    swapped = Linear(64, 64, bias=False)
    torch.nn.init.normal_(swapped.weight, std=0.3)
    model.blocks[1].att.key = swapped
    both()
    assert model.blocks[1]._step_params()[19] is swapped.weight


def test_float64_model_decodes_through_its_modules(monkeypatch):
    """The compiled step takes float32, bf16 and fp16 weights: a float64 model decoding one token
    runs its modules (it used to reach the step and fail there), and matches its own prefill. The
    WKV runs in float32 in every dtype: where both calls take the compiled recurrence they agree
    bit for bit; with the kernels off (the step against the chunked form) to float32 rounding
    (measured 3e-7 on logits of magnitude 3)."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=8).double()
    idx = torch.randint(0, 257, (1, 4), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        _, st = model(idx[:, :3])
        got = model(idx[:, 3:], st)[0]
        ref = model(idx)[0][:, 3:]
    assert got.dtype == torch.float64 and torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


def _unfused(m):
    """Make the time and channel mixes take their tensor operations (the fused passes' twin)."""
    m.setattr(rwkv6_module, "cpu_kernel", lambda: None)


@needs_kernels
@pytest.mark.parametrize("B, T, last_only", [(1, 1, False), (1, 2, False), (2, 3, True), (2, 17, False),
                                             (1, 17, True), (1, 2, True)])
@pytest.mark.parametrize("head_size, preset", [(16, None), (64, None), (16, "SpikeRWKV-4L")])
def test_fused_passes_equal_the_tensor_operations(monkeypatch, B, T, last_only, head_size, preset):
    """float32 without a gradient: the mixes' compiled elementwise passes against their tensor
    operations, on a plain model and a converted one (all sites), from a non-zero state, with
    layer 0's ln0 and a trained initial state: logits, every state, and each block's output shape
    ((B, 1, C) for the last block of a last-only forward)."""
    from spikelm.convert import apply_preset

    model = make_rwkv6(n_layer=2, n_embd=128, head_size=head_size, seed=10, has_time_state=True)
    if preset:
        model = apply_preset(model, preset, [torch.randint(0, 257, (1, 8))], sites="all")
    idx = torch.randint(0, 257, (B, T + 1), generator=torch.Generator().manual_seed(T))
    monkeypatch.setattr(Block, "_compiled_step", lambda self, x, s: None)  # one token too: the modules
    used, shapes = [], []
    fused = rwkv6_module._fused_cpu
    monkeypatch.setattr(rwkv6_module, "_fused_cpu", lambda *a: used.append(r := fused(*a)) or r)
    forward = Block.forward
    monkeypatch.setattr(Block, "forward", lambda self, *a, **kw: shapes.append((r := forward(self, *a, **kw))[0].shape) or r)
    runs = []
    for unfused in (False, True):
        with torch.inference_mode(), monkeypatch.context() as m:
            if unfused:
                _unfused(m)
            _, state = model(idx[:, :1])
            used.clear(), shapes.clear()
            runs.append(model(idx[:, 1:], state, last_only=last_only))
        # per block: the time mix's passes, its decay chain's (float32 input), the channel mix's
        assert len(used) == 6 and all((u is None) == unfused for u in used)
        assert shapes == [(B, T, 128), (B, 1 if last_only else T, 128)]
    (got, s_got), (ref, s_ref) = runs
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # noqa: E731
    assert got.shape == ref.shape and rel(got, ref) < 5e-6
    for a, b in zip(s_got, s_ref):
        for x, y in zip(a, b):
            assert x.shape == y.shape and x.is_contiguous() and rel(x, y) < 5e-6


@needs_kernels
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("preset", [None, "SpikeRWKV-4L"])
def test_passes_in_a_low_precision_model(monkeypatch, tmp_path, dtype, tol, preset):
    """A bf16 or fp16 model (as spikelm.load builds it: decay, bonus and GroupNorm kept float32)
    takes every pass, the decay chain's in float32. Plain, it agrees with its tensor operations
    within the model's own rounding (the passes round once where the operations round at every
    step). Converted (all sites), a rounding can move a value across a spike level, so the two
    are compared by their distance to the float32 converted model: the passes' no larger than
    the operations' (by 25%)."""
    from spikelm.convert import apply_preset

    path = save_official(make_rwkv6(n_layer=2, n_embd=128, head_size=16, seed=11), tmp_path / "m.pth")
    model = spikelm.load(path, dtype=dtype)
    calib = [torch.randint(0, 257, (1, 8), generator=torch.Generator().manual_seed(1))]
    if preset:
        model = apply_preset(model, preset, calib, sites="all")
    idx = torch.randint(0, 257, (1, 24), generator=torch.Generator().manual_seed(0))
    real, calls = rwkv6_module.cpu_kernel(), []

    class Spy:
        def __getattr__(self, name):
            return lambda *a: (calls.append((name, a[0].dtype)), getattr(real, name)(*a))[1]

    runs = []
    for unfused in (False, True):
        with torch.inference_mode(), monkeypatch.context() as m:
            m.setattr(rwkv6_module, "cpu_kernel", (lambda: None) if unfused else Spy)
            runs.append(model(idx)[0].float())
    per_block = [("token_lerp", dtype)] * 2 + [("rwkv6_decay_", torch.float32), ("silu_gate_", torch.float32),
                                               ("token_lerp", dtype), ("relu_square_", dtype), ("sigmoid_gate_", dtype)]
    assert calls == per_block * 2
    got, ref = runs
    if preset is None:
        assert ((got - ref).abs().max() / ref.abs().max()).item() < tol
        return
    with torch.inference_mode():
        exact = apply_preset(spikelm.load(path), preset, calib, sites="all")(idx)[0]
    rms = lambda a: ((a - exact).pow(2).mean() / exact.pow(2).mean()).sqrt().item()  # noqa: E731
    assert rms(got) <= 1.25 * rms(ref)


@needs_kernels
def test_fused_passes_only_where_they_compute_the_same():
    """float32, bf16 or fp16 (the other inputs in the same dtype) on the CPU without a gradient or
    autocast, with the kernels built."""
    x = torch.randn(1, 3, 8)
    with torch.inference_mode():
        for t in (x, x.bfloat16(), x.half()):
            assert rwkv6_module._fused_cpu(t, t[0]) is not None
        assert rwkv6_module._fused_cpu(x.double()) is None and rwkv6_module._fused_cpu(x.bfloat16(), x) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert rwkv6_module._fused_cpu(x) is None
    assert rwkv6_module._fused_cpu(x) is None  # a gradient is possible


def test_gradients_flow(tiny_rwkv6):
    tiny_rwkv6.train()
    idx = torch.randint(0, 257, (2, 40))
    logits, _ = tiny_rwkv6(idx)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in tiny_rwkv6.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_time_state_matches_reference(tmp_path):
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, vocab_size=257, has_time_state=True, seed=3)
    path = save_official(model, tmp_path / "ts.pth")
    ref = _reference(path)
    tokens = list(range(5, 30))
    ref_logits, _ = ref.forward(tokens, None, full_output=True)
    import spikelm

    ours = spikelm.load(path)
    assert ours.cfg.has_time_state
    with torch.no_grad():
        logits, _ = ours(torch.tensor([tokens]))
    assert _max_rel(logits[0], ref_logits.float()) <= 1e-4


def test_time_state_receives_gradient():
    """State tuning: time_state is a trained parameter. It used to enter through .detach() and
    never got a gradient (and DDP failed on it as an unused parameter)."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, has_time_state=True, seed=4).train()
    idx = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    logits, _ = model(idx)
    logits.logsumexp(-1).mean().backward()
    for blk in model.blocks:
        g = blk.att.time_state.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0


@pytest.mark.parametrize("T", [1, 9])
def test_token_shift_states_own_their_memory(tiny_rwkv6, T):
    """Token-shift states are (B, C) buffers of their own, not views keeping the (B, T, C)
    LayerNorm outputs alive."""
    B, C = 3, tiny_rwkv6.cfg.n_embd
    with torch.no_grad():
        _, state = tiny_rwkv6(torch.randint(0, 257, (B, T)))
    for att_shift, _, ffn_shift in state:
        for s in (att_shift, ffn_shift):
            assert s.shape == (B, C)
            assert s.untyped_storage().nbytes() == B * C * s.element_size()


def test_fp32_cpu_head_is_stored_transposed_through_build_load_and_casts(tmp_path):
    """RWKV6.lay_out_head: an fp32 CPU head lives (C, V)-major (decoding's matrix-vector product
    streams that order twice as fast); bf16 keeps (V, C); values, logits and saved files are unchanged."""
    from spikelm.checkpoints.loading import load, save, save_official
    from spikelm.testing import make_rwkv6

    m = make_rwkv6(n_layer=1, n_embd=32, vocab_size=96, head_size=16, seed=1)
    w = m.head.weight
    assert w.shape == (96, 32) and w.t().is_contiguous() and not w.is_contiguous()
    idx = torch.randint(0, 96, (2, 7))
    ref = torch.nn.functional.linear(m.ln_out(m.emb(idx)), w.contiguous())
    got = m.head(m.ln_out(m.emb(idx)))
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert m.bfloat16().head.weight.is_contiguous()
    assert m.float().head.weight.t().is_contiguous()
    m = make_rwkv6(n_layer=1, n_embd=32, vocab_size=96, head_size=16, seed=1)
    for path in (save_official(m, tmp_path / "m.pth"), save(m, tmp_path / "folder")):
        loaded = load(path)
        assert loaded.head.weight.t().is_contiguous()
        assert torch.equal(loaded.head.weight, m.head.weight)
        assert load(path, dtype=torch.bfloat16).head.weight.is_contiguous()
    x = torch.randint(0, 96, (1, 5))
    assert torch.equal(load(tmp_path / "folder")(x)[0], m(x)[0])
