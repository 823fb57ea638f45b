// One-row products in float32, bf16, fp16 (spikelm.ops.linear; the block step uses them too).
#include "spikelm.h"

// One-row products (decoding): y[o] = sum_i W[o][i] x[i] for a contiguous (O, I) weight W in its own
// dtype W (float, bf16, fp16) and x as float32; exact products, float32 sums, y rounded once to
// its dtype (round to nearest even), the arithmetic of a bf16 GEMM. Bound by memory: each weight
// is read once, in its own bytes.
#ifdef SPIKELM_X86
// 8 values of a weight or activation dtype widened to float32 (exact).
SPIKELM_AVX2 static inline __m256 widen8(const float* p) { return _mm256_loadu_ps(p); }
SPIKELM_AVX2 static inline __m256 widen8(const at::BFloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
SPIKELM_AVX2 static inline __m256 widen8(const at::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#endif

template <typename W>
static float dot_row(const W* w, const float* x, int64_t n) {
    float s = 0.f;
    for (int64_t i = 0; i < n; ++i) s += float(w[i]) * x[i];
    return s;
}

#ifdef SPIKELM_X86
template <typename W>
SPIKELM_AVX2 static float dot_row_avx2(const W* w, const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(widen8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(widen8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(widen8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(widen8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(widen8(w + i), _mm256_loadu_ps(x + i), a0);
    const __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q) + dot_row(w + i, x + i, n - i);
}
#endif

// y = W x for W (O, I): float32 sums into y (Out = float) or rounded once to Out
template <typename W, typename Out>
void gemv_rows(const W* w, const float* x, int64_t O, int64_t I, Out* y) {
    at::parallel_for(0, O, 64, [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o) {
#ifdef SPIKELM_X86
            if (has_avx2_fma()) { y[o] = Out(dot_row_avx2(w + o * I, x, I)); continue; }
#endif
            y[o] = Out(dot_row(w + o * I, x, I));
        }
    });
}

// The other memory order, a @ b for b (I, O) contiguous (the LoRA matrices are stored so):
// y[o] = sum_i x[i] b[i][o], rows of b scaled and added into float32 sums over a block of outputs.
template <typename W>
static void axpy_rows(const W* b, const float* x, int64_t I, int64_t O, int64_t o0, int64_t o1, float* acc) {
    for (int64_t o = o0; o < o1; ++o) acc[o - o0] = 0.f;
    for (int64_t i = 0; i < I; ++i) {
        const W* bi = b + i * O;
        const float xi = x[i];
        for (int64_t o = o0; o < o1; ++o) acc[o - o0] += xi * float(bi[o]);
    }
}

#ifdef SPIKELM_X86
template <typename W>
SPIKELM_AVX2 static void axpy_rows_avx2(const W* b, const float* x, int64_t I, int64_t O,
                                                                     int64_t o0, int64_t o1, float* acc) {
    int64_t o = o0;
    for (; o + 8 <= o1; o += 8) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t i = 0; i < I; ++i) a = _mm256_fmadd_ps(_mm256_set1_ps(x[i]), widen8(b + i * O + o), a);
        _mm256_storeu_ps(acc + (o - o0), a);
    }
    if (o < o1) axpy_rows(b, x, I, O, o, o1, acc + (o - o0));
}
#endif

// G products y_g = x_g @ b_g (+ c_g) for b (G, I, O): float32 sums, rounded once to Out
template <typename W, typename Out>
void gemv_cols(const W* b, const float* x, const float* c, int64_t G, int64_t I, int64_t O, Out* y) {
    // the outputs of all G products split between the threads in blocks
    at::parallel_for(0, G * O, 256, [&](int64_t begin, int64_t end) {
        std::vector<float> acc(end - begin);
        for (int64_t idx = begin; idx < end;) {
            const int64_t g = idx / O, o0 = idx % O, o1 = std::min(O, o0 + (end - idx));
            const W* bg = b + g * I * O;
            const float* xg = x + g * I;
#ifdef SPIKELM_X86
            if (has_avx2_fma()) axpy_rows_avx2(bg, xg, I, O, o0, o1, acc.data());
            else
#endif
            axpy_rows(bg, xg, I, O, o0, o1, acc.data());
            for (int64_t o = o0; o < o1; ++o)
                y[g * O + o] = Out(c ? acc[o - o0] + c[g * O + o] : acc[o - o0]);
            idx += o1 - o0;
        }
    });
}

// the products the ops below and the block step take
template void gemv_rows<float, float>(const float*, const float*, int64_t, int64_t, float*);
template void gemv_rows<at::BFloat16, float>(const at::BFloat16*, const float*, int64_t, int64_t, float*);
template void gemv_rows<at::Half, float>(const at::Half*, const float*, int64_t, int64_t, float*);
template void gemv_rows<at::BFloat16, at::BFloat16>(const at::BFloat16*, const float*, int64_t, int64_t, at::BFloat16*);
template void gemv_rows<at::Half, at::Half>(const at::Half*, const float*, int64_t, int64_t, at::Half*);
template void gemv_cols<float, float>(const float*, const float*, const float*, int64_t, int64_t, int64_t, float*);
template void gemv_cols<at::BFloat16, float>(const at::BFloat16*, const float*, const float*, int64_t, int64_t, int64_t,
                                             float*);
template void gemv_cols<at::Half, float>(const at::Half*, const float*, const float*, int64_t, int64_t, int64_t, float*);
template void gemv_cols<at::BFloat16, at::BFloat16>(const at::BFloat16*, const float*, const float*, int64_t, int64_t,
                                                    int64_t, at::BFloat16*);
template void gemv_cols<at::Half, at::Half>(const at::Half*, const float*, const float*, int64_t, int64_t, int64_t,
                                            at::Half*);

// b: (I, O) or G matrices (G, I, O), float32, bf16 or fp16, contiguous; x: I or G I values, any floating
// dtype; c: none or G O values added before the one rounding (baddbmm's c). Returns x @ b (+ c):
// (O,) for one matrix, (G, O) for G, in b's dtype.
at::Tensor gemv_t(at::Tensor x, at::Tensor b, c10::optional<at::Tensor> c) {
    check_floats(b, "gemv_t", "b");
    TORCH_CHECK(b.dim() == 2 || b.dim() == 3, "gemv_t: b must be (I, O) or (G, I, O) (shapes)");
    const int64_t G = b.dim() == 3 ? b.size(0) : 1, I = b.size(-2), O = b.size(-1);
    TORCH_CHECK(x.device().is_cpu() && x.is_floating_point() && x.numel() == G * I, "gemv_t: x must hold G I = ", G * I,
                " floating-point values on the CPU (shapes)");
    TORCH_CHECK(!c.has_value() || (c->device().is_cpu() && c->is_floating_point() && c->numel() == G * O),
                "gemv_t: c must hold G O = ", G * O, " floating-point values on the CPU (shapes)");
    std::vector<float> xbuf, cbuf;
    at::Tensor xkeep, ckeep;
    const float* xp = float_values(x, xbuf, xkeep);
    const float* cp = c.has_value() ? float_values(*c, cbuf, ckeep) : nullptr;
    auto y = b.dim() == 3 ? at::empty({G, O}, b.options()) : at::empty({O}, b.options());
    if (b.scalar_type() == at::kBFloat16)
        gemv_cols(b.data_ptr<at::BFloat16>(), xp, cp, G, I, O, y.data_ptr<at::BFloat16>());
    else if (b.scalar_type() == at::kHalf)
        gemv_cols(b.data_ptr<at::Half>(), xp, cp, G, I, O, y.data_ptr<at::Half>());
    else
        gemv_cols(b.data_ptr<float>(), xp, cp, G, I, O, y.data_ptr<float>());
    return y;
}

// x: (I,) any floating dtype; w: (O, I) float32, bf16 or fp16, contiguous. Returns (O,) in w's dtype.
at::Tensor gemv(at::Tensor x, at::Tensor w) {
    check_floats(w, "gemv", "w");
    TORCH_CHECK(w.dim() == 2, "gemv: w must be (O, I) (shapes)");
    TORCH_CHECK(x.device().is_cpu() && x.is_floating_point() && x.numel() == w.size(1), "gemv: x must hold I = ",
                w.size(1), " floating-point values on the CPU (shapes)");
    const int64_t O = w.size(0), I = w.size(1);
    std::vector<float> buf;
    at::Tensor keep;
    const float* xp = float_values(x, buf, keep);
    auto y = at::empty({O}, w.options());
    if (w.scalar_type() == at::kBFloat16)
        gemv_rows(w.data_ptr<at::BFloat16>(), xp, O, I, y.data_ptr<at::BFloat16>());
    else if (w.scalar_type() == at::kHalf)
        gemv_rows(w.data_ptr<at::Half>(), xp, O, I, y.data_ptr<at::Half>());
    else
        gemv_rows(w.data_ptr<float>(), xp, O, I, y.data_ptr<float>());
    return y;
}
