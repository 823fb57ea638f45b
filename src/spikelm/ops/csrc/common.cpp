// spikelm's compiled CPU kernels (spikelm/ops/cpu_kernels.py builds them): what every part uses.
// The parts are compiled as one unit, in the order of cpu_kernels.SOURCES, so none includes another.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <algorithm>
#include <type_traits>
#include <cstring>
#include <mutex>
#include <vector>

// x86-64 with GCC or Clang: the loops below get a second build for AVX2 + FMA (+ F16C), chosen at
// run time, so the extension stays portable to any x86-64 CPU (and builds elsewhere without it).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SPIKELM_X86 1
#include <immintrin.h>
#include <atomic>
static std::atomic<bool> avx2_allowed{true};  // set_avx2(false): the portable loops (their tests)
static bool has_avx2_fma() {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                           && __builtin_cpu_supports("f16c");
    return ok && avx2_allowed.load(std::memory_order_relaxed);
}
#endif

// Allow (true) or forbid (false) the AVX2 builds; returns whether they are now used.
bool set_avx2(bool allowed) {
#ifdef SPIKELM_X86
    avx2_allowed.store(allowed);
    return has_avx2_fma();
#else
    return false;
#endif
}

// ---- exp, 8 lanes: Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial for exp(r), times 2^n.
#ifdef SPIKELM_X86
__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x) {
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

__attribute__((target("avx2,fma"))) static int64_t exp_avx2(const float* in, float* out, int64_t n) {
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
