// The WKV6 recurrence of spikelm.ops.wkv6 (its naive twin: wkv6_naive).
#include "spikelm.h"

// Allow (true) or forbid (false) the AVX2 builds of every kernel; returns whether they are now used.
bool set_avx2(bool allowed) {
#ifdef SPIKELM_X86
    avx2_allowed.store(allowed);
    return has_avx2_fma();
#else
    return false;
#endif
}

// ---- exp, 8 lanes: Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial for exp(r), times 2^n;
// within 2 ulp of the exact exp; 0 below the smallest normal result, inf above the largest, NaN kept.
#ifdef SPIKELM_X86
SPIKELM_AVX2 static inline __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504019f);
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    __m256 t = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    t = _mm256_sub_ps(t, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    t = _mm256_sub_ps(t, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(t, t), _mm256_add_ps(t, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_andnot_ps(under, y);  // below the smallest normal result: 0
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
    return _mm256_blendv_ps(y, x, nan);  // NaN stays NaN
}

SPIKELM_AVX2 static int64_t exp_avx2(const float* in, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp8(_mm256_loadu_ps(in + i)));
    return i;
}
#endif

// out[i] = exp(in[i]) for n floats: exp8 where AVX2 is allowed, std::exp for the rest (one thread;
// callers split the work).
static void exp_into(const float* in, float* out, int64_t n) {
    int64_t i = 0;
#ifdef SPIKELM_X86
    if (has_avx2_fma()) i = exp_avx2(in, out, n);
#endif
    for (; i < n; ++i) out[i] = std::exp(in[i]);
}

// One token of one head: y = r S + bonus v, then S <- diag(w) S + k v^T (S: N x N, [key][value],
// updated in place; w = exp(logw), the decays; acc: N floats of scratch).
static void wkv6_token(const float* rt, const float* kt, const float* vt, const float* w, float bonus, float* S,
                       float* yt, int64_t N, float* acc) {
    for (int64_t j = 0; j < N; ++j) acc[j] = 0.f;
    for (int64_t i = 0; i < N; ++i) {
        const float ri = rt[i], wi = w[i], ki = kt[i];
        float* Si = S + i * N;
        for (int64_t j = 0; j < N; ++j) {
            acc[j] += ri * Si[j];
            Si[j] = wi * Si[j] + ki * vt[j];
        }
    }
    for (int64_t j = 0; j < N; ++j) yt[j] = acc[j] + bonus * vt[j];
}

#ifdef SPIKELM_X86
// The same token for AVX2 + FMA. Where N is a multiple of 32 the value index j runs in blocks of
// 32 held in registers (four 8-lane vectors of v_t and of the output) while i walks the state's
// rows: each state value is loaded and stored once per token, and nothing else is. Other N: the
// loop above, compiled for these instructions.
__attribute__((target("avx2,fma"), flatten))
static void wkv6_token_avx2(const float* rt, const float* kt, const float* vt, const float* w, float bonus, float* S,
                            float* yt, int64_t N, float* acc) {
    if (N % 32 != 0) { wkv6_token(rt, kt, vt, w, bonus, S, yt, N, acc); return; }
    const __m256 vb = _mm256_set1_ps(bonus);
    for (int64_t j = 0; j < N; j += 32) {
        const __m256 v0 = _mm256_loadu_ps(vt + j), v1 = _mm256_loadu_ps(vt + j + 8);
        const __m256 v2 = _mm256_loadu_ps(vt + j + 16), v3 = _mm256_loadu_ps(vt + j + 24);
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int64_t i = 0; i < N; ++i) {
            const __m256 ri = _mm256_set1_ps(rt[i]), wi = _mm256_set1_ps(w[i]), ki = _mm256_set1_ps(kt[i]);
            float* Si = S + i * N + j;
            __m256 s0 = _mm256_loadu_ps(Si), s1 = _mm256_loadu_ps(Si + 8);
            __m256 s2 = _mm256_loadu_ps(Si + 16), s3 = _mm256_loadu_ps(Si + 24);
            a0 = _mm256_fmadd_ps(ri, s0, a0);
            a1 = _mm256_fmadd_ps(ri, s1, a1);
            a2 = _mm256_fmadd_ps(ri, s2, a2);
            a3 = _mm256_fmadd_ps(ri, s3, a3);
            _mm256_storeu_ps(Si, _mm256_fmadd_ps(wi, s0, _mm256_mul_ps(ki, v0)));
            _mm256_storeu_ps(Si + 8, _mm256_fmadd_ps(wi, s1, _mm256_mul_ps(ki, v1)));
            _mm256_storeu_ps(Si + 16, _mm256_fmadd_ps(wi, s2, _mm256_mul_ps(ki, v2)));
            _mm256_storeu_ps(Si + 24, _mm256_fmadd_ps(wi, s3, _mm256_mul_ps(ki, v3)));
        }
        _mm256_storeu_ps(yt + j, _mm256_fmadd_ps(vb, v0, a0));
        _mm256_storeu_ps(yt + j + 8, _mm256_fmadd_ps(vb, v1, a1));
        _mm256_storeu_ps(yt + j + 16, _mm256_fmadd_ps(vb, v2, a2));
        _mm256_storeu_ps(yt + j + 24, _mm256_fmadd_ps(vb, v3, a3));
    }
}
#endif

wkv6_token_fn wkv6_token_here() {
#ifdef SPIKELM_X86
    if (has_avx2_fma()) return wkv6_token_avx2;
#endif
    return wkv6_token;
}

void wkv6_head(const float* rp, const float* kp, const float* vp, const float* wp, const float* uh, float* S,
                      float* yp, int64_t T, int64_t stride, int64_t N, float* acc, wkv6_token_fn token) {
    for (int64_t t = 0; t < T; ++t) {
        const int64_t off = t * stride;
        const float* rt = rp + off;
        const float* kt = kp + off;
        float bonus = 0.f;  // r . (u * k): the current token's own contribution, y += bonus v
        for (int64_t i = 0; i < N; ++i) bonus += rt[i] * uh[i] * kt[i];
        token(rt, kt, vp + off, wp + off, bonus, S, yp + off, N, acc);
    }
}

// r, k, v, logw: (B, T, H, N) float32 contiguous; u: (H, N); s: (B, H, N, N), updated in place.
at::Tensor wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor logw, at::Tensor u, at::Tensor s) {
    const char* op = "wkv6_forward";
    TORCH_CHECK(r.dim() == 4, op, ": r must be (B, T, H, N), got ", r.dim(), " dimensions");
    const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
    for (auto* t : {&r, &k, &v, &logw}) {
        check_tensor(*t, op, "r, k, v and logw", {at::kFloat});
        TORCH_CHECK(t->sizes() == r.sizes(), op, ": r, k, v and logw must have one shape, got ", t->sizes(), " and ",
                    r.sizes());
    }
    check_tensor(u, op, "u", {at::kFloat});
    check_tensor(s, op, "s", {at::kFloat});
    TORCH_CHECK(u.dim() == 2 && u.size(0) == H && u.size(1) == N, op, ": u must be (H, N) = (", H, ", ", N, ")");
    TORCH_CHECK(s.dim() == 4 && s.size(0) == B && s.size(1) == H && s.size(2) == N && s.size(3) == N, op,
                ": s must be (B, H, N, N) = (", B, ", ", H, ", ", N, ", ", N, "), got ", s.sizes());
    auto y = at::empty_like(r);
    const float* rp = r.data_ptr<float>();
    const float* kp = k.data_ptr<float>();
    const float* vp = v.data_ptr<float>();
    // the decays, exp(logw), in one vectorised pass (a scalar exp per value costs more than the rest):
    // with AVX2 the header's exp8 (within 2 ulp), elsewhere torch's own vectorised exp
    at::Tensor decay;
#ifdef SPIKELM_X86
    if (has_avx2_fma()) {
        decay = at::empty_like(logw);
        const float* lp = logw.data_ptr<float>();
        float* dp = decay.data_ptr<float>();
        at::parallel_for(0, logw.numel(), 16384, [&](int64_t begin, int64_t end) { exp_into(lp + begin, dp + begin, end - begin); });
    }
#endif
    if (!decay.defined()) decay = logw.exp();
    const float* wp = decay.data_ptr<float>();
    const float* up = u.data_ptr<float>();
    float* sp = s.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> acc(N);
        const wkv6_token_fn token = wkv6_token_here();
        for (int64_t bh = begin; bh < end; ++bh) {
            const int64_t b = bh / H, h = bh % H, off = (b * T * H + h) * N;
            wkv6_head(rp + off, kp + off, vp + off, wp + off, up + h * N, sp + bh * N * N, yp + off, T, H * N, N,
                      acc.data(), token);
        }
    });
    return y;
}
