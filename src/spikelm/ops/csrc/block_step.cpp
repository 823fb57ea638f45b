// spikelm's compiled CPU kernels, part 4 (after products.cpp): one decoding step of an RWKV-6 block.

// One decoding step of an RWKV-6 block (spikelm.models.rwkv6.Block.forward for T = 1), every
// operation of the block on one token in one call: the same arithmetic as the modules' in float32
// (weights read in their dtype, activations kept in float32 between the products instead of
// rounded to the model's dtype after each), the WKV state float32. p: the block's parameters in
// the order of spikelm.models.rwkv6.Block.STEP_PARAMS (ln0 empty for blocks without it).
static void layer_norm(const float* x, const float* w, const float* b, int64_t n, float eps, float* y) {
    float mean = 0.f, var = 0.f;
    for (int64_t i = 0; i < n; ++i) mean += x[i];
    mean /= float(n);
    for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.f / std::sqrt(var / float(n) + eps);
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * inv * w[i] + b[i];
}

template <typename W>
static void block_step_impl(const std::vector<at::Tensor>& p, const float* const* v, const float* xin,
                            const float* att_shift, const float* ffn_shift, float* S, float* xout, float* att_new,
                            float* ffn_new, int64_t C, int64_t A, int64_t H, int64_t N, int64_t Fh, int64_t Dm,
                            int64_t Dd, float ln_eps, float gn_eps) {
    enum { LN0W, LN0B, LN1W, LN1B, LN2W, LN2B, MX, MW, MK, MV, MR, MG, W1, W2, TD, DW1, DW2, TF, WR, WK, WV, WG, WO,
           GNW, GNB, FMK, FMR, FWK, FWR, FWV };
    auto mat = [&](int i) { return p[i].data_ptr<W>(); };
    std::vector<float> x(xin, xin + C), h(C), xx(C), xxx(C), l1(5 * Dm), mix(5 * C), xs(5 * C), r(A), k(A), vv(A),
        g(A), dd(Dd), d(A), w(A), y(A), acc(N), out(C), fk(Fh), fr(C), fv(C);
    if (p[LN0W].numel() > 0) layer_norm(x.data(), v[LN0W], v[LN0B], C, ln_eps, x.data());
    // time mix: ddlerp, its LoRA, the five mixes
    layer_norm(x.data(), v[LN1W], v[LN1B], C, ln_eps, h.data());
    for (int64_t i = 0; i < C; ++i) {
        xx[i] = att_shift[i] - h[i];
        xxx[i] = h[i] + xx[i] * v[MX][i];
        att_new[i] = h[i];
    }
    gemv_cols(mat(W1), xxx.data(), static_cast<const float*>(nullptr), 1, C, 5 * Dm, l1.data());
    for (auto& e : l1) e = std::tanh(e);
    gemv_cols(mat(W2), l1.data(), static_cast<const float*>(nullptr), 5, Dm, C, mix.data());
    const int maa[5] = {MW, MK, MV, MR, MG};
    for (int j = 0; j < 5; ++j)
        for (int64_t i = 0; i < C; ++i) xs[j * C + i] = h[i] + xx[i] * (v[maa[j]][i] + mix[j * C + i]);
    const float *xw = xs.data(), *xk = xw + C, *xv = xk + C, *xr = xv + C, *xg = xr + C;
    gemv_rows(mat(WR), xr, A, C, r.data());
    gemv_rows(mat(WK), xk, A, C, k.data());
    gemv_rows(mat(WV), xv, A, C, vv.data());
    gemv_rows(mat(WG), xg, A, C, g.data());
    for (auto& e : g) e = e / (1.f + std::exp(-e));  // silu
    // data-dependent decay: w = exp(-exp(d)), the log-decay clamped at -60 as the model does
    gemv_cols(mat(DW1), xw, static_cast<const float*>(nullptr), 1, C, Dd, dd.data());
    for (auto& e : dd) e = std::tanh(e);
    gemv_cols(mat(DW2), dd.data(), v[TD], 1, Dd, A, d.data());
    for (int64_t i = 0; i < A; ++i) w[i] = std::exp(std::max(-std::exp(d[i]), -60.f));
    // WKV, one token per head, then GroupNorm per head, the gate and the output projection
    const wkv6_token_fn token = wkv6_token_here();
    for (int64_t hh = 0; hh < H; ++hh) {
        const int64_t o = hh * N;
        wkv6_head(r.data() + o, k.data() + o, vv.data() + o, w.data() + o, v[TF] + o, S + hh * N * N, y.data() + o, 1,
                  A, N, acc.data(), token);
        layer_norm(y.data() + o, v[GNW] + o, v[GNB] + o, N, gn_eps, y.data() + o);
    }
    for (int64_t i = 0; i < A; ++i) y[i] *= g[i];
    gemv_rows(mat(WO), y.data(), C, A, out.data());
    for (int64_t i = 0; i < C; ++i) x[i] += out[i];
    // channel mix
    layer_norm(x.data(), v[LN2W], v[LN2B], C, ln_eps, h.data());
    for (int64_t i = 0; i < C; ++i) {
        const float dx = ffn_shift[i] - h[i];
        xxx[i] = h[i] + dx * v[FMK][i];  // the key's mix
        xx[i] = h[i] + dx * v[FMR][i];   // the receptance's mix
        ffn_new[i] = h[i];
    }
    gemv_rows(mat(FWK), xxx.data(), Fh, C, fk.data());
    for (auto& e : fk) e = e > 0.f ? e * e : 0.f;  // relu, squared
    gemv_rows(mat(FWR), xx.data(), C, C, fr.data());
    gemv_rows(mat(FWV), fk.data(), C, Fh, fv.data());
    for (int64_t i = 0; i < C; ++i) xout[i] = x[i] + fv[i] / (1.f + std::exp(-fr[i]));
}

// x, att_shift, ffn_shift: (B, C); wkv: (B, H, N, N) float32 (not written to); p: see above.
// Returns [x_out, att_shift, wkv, ffn_shift], x and the shifts in x's dtype.
std::vector<at::Tensor> rwkv6_block_step(at::Tensor x, at::Tensor att_shift, at::Tensor wkv, at::Tensor ffn_shift,
                                         std::vector<at::Tensor> p, double ln_eps, double gn_eps) {
    TORCH_CHECK(p.size() == 30, "rwkv6_block_step: 30 parameters");
    const int64_t B = x.size(0), C = x.size(1), H = wkv.size(1), N = wkv.size(2);
    const int64_t A = p[18].size(0), Fh = p[27].size(0), Dm = p[13].size(1), Dd = p[15].size(1);
    const auto wt = p[18].scalar_type();
    // the matrices, read in their dtype; every other parameter is a vector, taken as float32 once per call
    static const int matrices[] = {12, 13, 15, 16, 18, 19, 20, 21, 22, 27, 28, 29};
    std::vector<std::vector<float>> bufs(p.size());
    std::vector<at::Tensor> keeps(p.size());
    std::vector<const float*> v(p.size(), nullptr);
    for (size_t i = 0; i < p.size(); ++i) {
        if (std::find(std::begin(matrices), std::end(matrices), int(i)) != std::end(matrices)) {
            TORCH_CHECK(p[i].scalar_type() == wt && p[i].is_contiguous(), "rwkv6_block_step: matrices of one dtype");
        } else {
            v[i] = float_values(p[i], bufs[i], keeps[i]);
        }
    }
    TORCH_CHECK(wkv.scalar_type() == at::kFloat && A == H * N, "rwkv6_block_step: state");
    auto S = wkv.clone(at::MemoryFormat::Contiguous);
    const auto f32 = x.options().dtype(at::kFloat);
    auto xo = at::empty({B, C}, f32), ao = at::empty({B, C}, f32), fo = at::empty({B, C}, f32);
    std::vector<float> xb, ab, fb;
    at::Tensor xk, ak, fk;
    const float* xp = float_values(x, xb, xk);
    const float* ap = float_values(att_shift, ab, ak);
    const float* fp = float_values(ffn_shift, fb, fk);
    for (int64_t b = 0; b < B; ++b) {
        float* Sb = S.data_ptr<float>() + b * H * N * N;
        float *xr = xo.data_ptr<float>() + b * C, *ar = ao.data_ptr<float>() + b * C, *fr = fo.data_ptr<float>() + b * C;
        if (wt == at::kFloat)
            block_step_impl<float>(p, v.data(), xp + b * C, ap + b * C, fp + b * C, Sb, xr, ar, fr, C, A, H, N, Fh, Dm,
                                   Dd, float(ln_eps), float(gn_eps));
        else if (wt == at::kBFloat16)
            block_step_impl<at::BFloat16>(p, v.data(), xp + b * C, ap + b * C, fp + b * C, Sb, xr, ar, fr, C, A, H, N,
                                          Fh, Dm, Dd, float(ln_eps), float(gn_eps));
        else if (wt == at::kHalf)
            block_step_impl<at::Half>(p, v.data(), xp + b * C, ap + b * C, fp + b * C, Sb, xr, ar, fr, C, A, H, N, Fh,
                                      Dm, Dd, float(ln_eps), float(gn_eps));
        else TORCH_CHECK(false, "rwkv6_block_step: float32, bfloat16 or float16 weights");
    }
    return {xo.to(x.scalar_type()), ao.to(x.scalar_type()), S, fo.to(x.scalar_type())};
}
