// One decoding step of an RWKV-6 block (spikelm.models.rwkv6.Block.forward for T = 1; its twin is
// the block's modules), every operation of the block on one token in one call: the same arithmetic
// as the modules' in float32 (weights read in their dtype, activations kept in float32 between the
// products instead of rounded to the model's dtype after each), the WKV state float32.
#include "spikelm.h"

// The parameters the step takes, by their names in the block's state dict: the one table (Python
// reads it through rwkv6_block_step_params and passes the tensors in its order). MAT: a matrix,
// read in its own dtype (all of one dtype); VEC: a vector, any float dtype; shapes are checked.
#define SPIKELM_STEP_PARAMS(X)                                                                     \
    X(LN0W, "ln0.weight", VEC) X(LN0B, "ln0.bias", VEC) X(LN1W, "ln1.weight", VEC)                  \
    X(LN1B, "ln1.bias", VEC) X(LN2W, "ln2.weight", VEC) X(LN2B, "ln2.bias", VEC)                    \
    X(MX, "att.time_maa_x", VEC) X(MW, "att.time_maa_w", VEC) X(MK, "att.time_maa_k", VEC)          \
    X(MV, "att.time_maa_v", VEC) X(MR, "att.time_maa_r", VEC) X(MG, "att.time_maa_g", VEC)          \
    X(W1, "att.time_maa_w1", MAT) X(W2, "att.time_maa_w2", MAT) X(TD, "att.time_decay", VEC)        \
    X(DW1, "att.time_decay_w1", MAT) X(DW2, "att.time_decay_w2", MAT) X(TF, "att.time_faaaa", VEC)  \
    X(WR, "att.receptance.weight", MAT) X(WK, "att.key.weight", MAT) X(WV, "att.value.weight", MAT) \
    X(WG, "att.gate.weight", MAT) X(WO, "att.output.weight", MAT) X(GNW, "att.ln_x.weight", VEC)    \
    X(GNB, "att.ln_x.bias", VEC) X(FMK, "ffn.time_maa_k", VEC) X(FMR, "ffn.time_maa_r", VEC)        \
    X(FWK, "ffn.key.weight", MAT) X(FWR, "ffn.receptance.weight", MAT) X(FWV, "ffn.value.weight", MAT)

enum StepParam {
#define SPIKELM_ID(id, name, kind) id,
    SPIKELM_STEP_PARAMS(SPIKELM_ID)
#undef SPIKELM_ID
    N_STEP_PARAMS
};
enum { VEC = 0, MAT = 1 };
static const char* const step_names[] = {
#define SPIKELM_NAME(id, name, kind) name,
    SPIKELM_STEP_PARAMS(SPIKELM_NAME)
#undef SPIKELM_NAME
};
static const int step_kinds[] = {
#define SPIKELM_KIND(id, name, kind) kind,
    SPIKELM_STEP_PARAMS(SPIKELM_KIND)
#undef SPIKELM_KIND
};

std::tuple<std::vector<std::string>, std::vector<int64_t>> rwkv6_block_step_params() {
    return {std::vector<std::string>(step_names, step_names + N_STEP_PARAMS),
            std::vector<int64_t>(step_kinds, step_kinds + N_STEP_PARAMS)};
}

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

// Every parameter's expected shape, from the block's sizes, as numel (vectors) or (rows, cols) (matrices).
static void check_step_params(const std::vector<at::Tensor>& p, int64_t C, int64_t A, int64_t H, int64_t N, int64_t Fh,
                              int64_t Dm, int64_t Dd) {
    const char* op = "rwkv6_block_step";
    TORCH_CHECK(int64_t(p.size()) == N_STEP_PARAMS, op, ": ", N_STEP_PARAMS, " parameters (rwkv6_block_step_params), got ",
                p.size());
    const int64_t vec[N_STEP_PARAMS] = {C, C, C, C, C, C, C, C, C, C, C, C, 0, 0, A, 0, 0, H * N, 0, 0, 0, 0, 0, A, A,
                                        C, C, 0, 0, 0};
    const std::pair<int64_t, int64_t> mat[N_STEP_PARAMS] = {
        {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {C, 5 * Dm}, {5 * Dm, C}, {}, {C, Dd}, {Dd, A}, {}, {A, C}, {A, C},
        {A, C}, {A, C}, {C, A}, {}, {}, {}, {}, {Fh, C}, {C, C}, {C, Fh}};
    const auto wt = p[WR].scalar_type();
    for (int i = 0; i < N_STEP_PARAMS; ++i) {
        const at::Tensor& t = p[i];
        TORCH_CHECK(t.defined() && t.device().is_cpu() && t.is_floating_point(), op, ": ", step_names[i],
                    " must be a floating-point CPU tensor");
        if (step_kinds[i] == MAT) {
            check_floats(t, op, step_names[i]);
            TORCH_CHECK(t.scalar_type() == wt, op, ": the matrices must be of one dtype; ", step_names[i], " is ",
                        t.scalar_type(), ", att.receptance.weight ", wt);
            TORCH_CHECK(t.numel() == mat[i].first * mat[i].second && t.size(-1) == mat[i].second, op, ": ",
                        step_names[i], " has shape ", t.sizes(), ", expected (", mat[i].first, ", ", mat[i].second, ")");
        } else if (!(i <= LN0B && t.numel() == 0)) {  // ln0: empty in every block but the first
            check_numel(t, vec[i], op, step_names[i]);
        }
    }
}

// x, att_shift, ffn_shift: (B, C); wkv: (B, H, N, N) float32 (not written to); p: the tensors
// named by rwkv6_block_step_params, in its order (ln0 empty for blocks without it).
// Returns [x_out, att_shift, wkv, ffn_shift], x and the shifts in x's dtype.
std::vector<at::Tensor> rwkv6_block_step(at::Tensor x, at::Tensor att_shift, at::Tensor wkv, at::Tensor ffn_shift,
                                         std::vector<at::Tensor> p, double ln_eps, double gn_eps) {
    const char* op = "rwkv6_block_step";
    TORCH_CHECK(int64_t(p.size()) == N_STEP_PARAMS, op, ": ", N_STEP_PARAMS, " parameters (rwkv6_block_step_params), got ",
                p.size());
    TORCH_CHECK(x.dim() == 2 && wkv.dim() == 4 && p[WR].dim() == 2 && p[FWK].dim() == 2 && p[W2].dim() == 3
                && p[DW1].dim() == 2, op, ": x (B, C), wkv (B, H, N, N), 2-D weights and time_maa_w2 (5, Dm, C)");
    const int64_t B = x.size(0), C = x.size(1), H = wkv.size(1), N = wkv.size(2);
    const int64_t A = p[WR].size(0), Fh = p[FWK].size(0), Dm = p[W2].size(1), Dd = p[DW1].size(1);
    check_floats(x, op, "x");
    for (auto* t : {&att_shift, &ffn_shift}) {
        check_floats(*t, op, "the shifts");
        check_numel(*t, B * C, op, "a shift");
    }
    check_tensor(wkv, op, "wkv", {at::kFloat});
    TORCH_CHECK(wkv.size(0) == B && wkv.size(3) == N && A == H * N, op, ": wkv must be (B, H, N, N) with H N = ", A);
    check_step_params(p, C, A, H, N, Fh, Dm, Dd);
    const auto wt = p[WR].scalar_type();
    std::vector<std::vector<float>> bufs(p.size());
    std::vector<at::Tensor> keeps(p.size());
    std::vector<const float*> v(p.size(), nullptr);
    for (int i = 0; i < N_STEP_PARAMS; ++i)
        if (step_kinds[i] == VEC) v[i] = float_values(p[i], bufs[i], keeps[i]);  // vectors as float32, once per call
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
