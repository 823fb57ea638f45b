// Spike decoding over T steps and the histogram of spike-encoder levels (spikelm.ops.spikes; their
// twins: the tensor operations of spikelm.ops.spikes.decode_steps and spikelm.energy.spike_counts).
#include "spikelm.h"

// q: levels (float32, integer values 0 .. 2^layers - 1, or NaN), x: the encoder's input (same
// numel), unit: float32 of 1 or C (= x's last dimension) values. Returns int64
// [hist of q + 2^layers [x < 0] (2^(layers+1) bins) ..., clipped, nan].
// A value is clipped where fl(|x| / unit) > u_max, u_max = 2^l - 1. For l <= 23 the float32 just
// above u_max is u_max + ulp and a tie between them rounds to u_max (its last mantissa bit is 0),
// so fl(|x| / unit) > u_max exactly when |x| > unit (u_max + ulp / 2), a product that is exact in
// double (24 + 26 bits): one comparison per value instead of a division.
template <typename X, int64_t L>
static void level_histogram_range(const float* __restrict q, const X* __restrict x, const double* __restrict thr,
                                  int64_t begin, int64_t end, int64_t C, int64_t layers_rt, int64_t* __restrict out) {
    // one thread's share: K interleaved histograms, so consecutive values rarely wait on one counter
    constexpr int64_t K = 4;
    const int64_t layers = L > 0 ? L : layers_rt;
    const int64_t bins = int64_t(2) << layers, top = (int64_t(1) << layers) - 1;
    std::vector<int32_t> hv(K * bins, 0);
    int32_t* __restrict h = hv.data();
    int64_t clipped = 0, nans = 0, bad = 0;
    int64_t c = begin % C;  // the channel of value i (no division per value)
    for (int64_t i = begin; i < end; ++i, c = (c + 1 == C) ? 0 : c + 1) {
        const float qv = q[i];
        if (!(qv == qv)) { ++nans; continue; }
        if (!(qv >= 0.f && qv <= float(top))) { ++bad; continue; }  // not a level: counted, refused by the caller
        const int64_t level = int64_t(qv);
        const float xv = float(x[i]);
        ++h[(i & (K - 1)) * bins + level + (int64_t(xv < 0.f) << layers)];
        clipped += (level == top) & (double(std::fabs(xv)) > thr[c]);
    }
    for (int64_t k = 0; k < K; ++k)
        for (int64_t b = 0; b < bins; ++b) out[b] += h[k * bins + b];
    out[bins] += clipped;
    out[bins + 1] += nans;
    out[bins + 2] += bad;
}

// q: levels (float32, integer values 0 .. 2^layers - 1, or NaN), x: the encoder's input (same
// numel), unit: float32 of 1 or C (= x's last dimension) values. out: int64
// [hist of q + 2^layers [x < 0] (2^(layers+1) bins) ..., clipped, nan].
template <typename X>
static void level_histogram_impl(const float* q, const X* x, const float* unit, int64_t n, int64_t C,
                                 int64_t layers, int64_t* out) {
    const int64_t width = (int64_t(2) << layers) + 3;  // the bins, clipped, NaN, and values that are no level
    const double u_max = double((int64_t(1) << layers) - 1);
    const double half_ulp = std::ldexp(1.0, int(layers) - 1 - 24);  // ulp(u_max) / 2
    std::vector<double> thr(C);
    for (int64_t j = 0; j < C; ++j) thr[j] = double(unit[j]) * (u_max + half_ulp);
    std::mutex lock;
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
        std::vector<int64_t> part(width, 0);
        switch (layers) {  // the common codes with their histogram size known to the compiler
            case 1: level_histogram_range<X, 1>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            case 2: level_histogram_range<X, 2>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            case 3: level_histogram_range<X, 3>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            case 4: level_histogram_range<X, 4>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            case 5: level_histogram_range<X, 5>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            default: level_histogram_range<X, 0>(q, x, thr.data(), begin, end, C, layers, part.data());
        }
        std::lock_guard<std::mutex> g(lock);
        for (int64_t b = 0; b < width; ++b) out[b] += part[b];
    });
}

at::Tensor level_histogram(at::Tensor q, at::Tensor x, at::Tensor unit, int64_t layers) {
    const char* op = "level_histogram";
    TORCH_CHECK(layers >= 1 && layers <= 16, op, ": layers must be 1 to 16, got ", layers);
    check_tensor(q, op, "q", {at::kFloat});
    check_floats(x, op, "x");
    check_tensor(unit, op, "unit", {at::kFloat});
    check_numel(x, q.numel(), op, "x (as many values as q)");
    TORCH_CHECK(unit.numel() == 1 || (x.dim() > 0 && unit.numel() == x.size(-1)), op,
                ": unit must hold 1 value or one per channel of x's last dimension");
    const int64_t bins = int64_t(2) << layers;
    auto out = at::zeros({bins + 3}, at::kLong);
    const int64_t n = q.numel(), C = unit.numel();
    const float* qp = q.data_ptr<float>();
    const float* up = unit.data_ptr<float>();
    int64_t* hist = out.data_ptr<int64_t>();
    if (x.scalar_type() == at::kFloat) level_histogram_impl(qp, x.data_ptr<float>(), up, n, C, layers, hist);
    else if (x.scalar_type() == at::kBFloat16) level_histogram_impl(qp, x.data_ptr<at::BFloat16>(), up, n, C, layers, hist);
    else level_histogram_impl(qp, x.data_ptr<at::Half>(), up, n, C, layers, hist);
    TORCH_CHECK(hist[bins + 2] == 0, "level_histogram: q must hold integer levels 0 to 2^layers - 1 (or NaN); ",
                hist[bins + 2], " values are not");
    return out.narrow(0, 0, bins + 2);
}

// The spike encoders' decoded values (spikelm.spiking.encoding.mhse_decode's general path), one
// pass per value, with that path's float operations in its order, so bit for bit its result:
//   a = fl32(|x| / s) (float32 division), min(a, a_max); q = floor(double(a) 2^(l-n) T [+ 1/2]);
//   out = copysign(q 2^(n-l) / T * double(s), x), converted to x's dtype as torch converts a double.
// x: float32 / bf16 / fp16, contiguous, C = its last dimension; scale: float32, 1 or C values.
#ifdef SPIKELM_X86
// The loop below for float32, eight values at a time: the same operations (each product is exact,
// the division by T comes from the table, the conversions round to nearest), so the same bits.
// Returns how many values of the row it did (a multiple of 8).
__attribute__((target("avx2,fma")))
static int64_t mhse_decode_row_avx2(const float* x, const float* scale, float* o, int64_t C, double up_steps,
                                    double half, float a_max, const double* level) {
    const __m256 sign = _mm256_set1_ps(-0.0f), amax = _mm256_set1_ps(a_max), zero = _mm256_setzero_ps();
    const __m256d sign_d = _mm256_set1_pd(-0.0), mul = _mm256_set1_pd(up_steps), add = _mm256_set1_pd(half);
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
        const __m256 xv = _mm256_loadu_ps(x + c), sv = _mm256_loadu_ps(scale + c);
        const __m256 a_raw = _mm256_div_ps(_mm256_andnot_ps(sign, xv), sv);
        const __m256 nan = _mm256_cmp_ps(a_raw, a_raw, _CMP_UNORD_Q);
        const __m256 a = _mm256_blendv_ps(_mm256_min_ps(a_raw, amax), zero, nan);  // NaN lanes: index 0, put back below
        __m256d half_out[2];
        for (int h = 0; h < 2; ++h) {
            const __m128 ah = h ? _mm256_extractf128_ps(a, 1) : _mm256_castps256_ps128(a);
            const __m128 sh = h ? _mm256_extractf128_ps(sv, 1) : _mm256_castps256_ps128(sv);
            const __m128 xh = h ? _mm256_extractf128_ps(xv, 1) : _mm256_castps256_ps128(xv);
            const __m256d q = _mm256_floor_pd(_mm256_add_pd(_mm256_mul_pd(_mm256_cvtps_pd(ah), mul), add));
            const __m256d lv = _mm256_i32gather_pd(level, _mm256_cvttpd_epi32(q), 8);
            const __m256d val = _mm256_mul_pd(lv, _mm256_cvtps_pd(sh));
            half_out[h] = _mm256_or_pd(val, _mm256_and_pd(_mm256_cvtps_pd(xh), sign_d));  // copysign (val >= 0)
        }
        const __m256 res = _mm256_set_m128(_mm256_cvtpd_ps(half_out[1]), _mm256_cvtpd_ps(half_out[0]));
        _mm256_storeu_ps(o + c, _mm256_blendv_ps(res, a_raw, nan));
    }
    return c;
}
#endif

template <typename X>
static void mhse_decode_impl(const X* x, const float* scale, X* out, int64_t n, int64_t C, int64_t T,
                             int64_t layers, int64_t n_int, bool init_half, float a_max) {
    const double up = std::ldexp(1.0, int(layers - n_int)), down = std::ldexp(1.0, int(n_int - layers));
    const double steps = double(T), half = init_half ? 0.5 : 0.0;
    // q is an integer from 0 to q_top: q 2^(n-l) / T, the same double, from a table (no division per value)
    const int64_t q_top = int64_t(std::floor(double(a_max) * up * steps + half));
    std::vector<double> level(q_top + 1);
    for (int64_t q = 0; q <= q_top; ++q) level[q] = double(q) * down / steps;
    const int64_t rows = n / C;
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / C), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const X* xr = x + r * C;
            X* o = out + r * C;
            int64_t c = 0;
#ifdef SPIKELM_X86
            if (std::is_same<X, float>::value && has_avx2_fma())
                c = mhse_decode_row_avx2(reinterpret_cast<const float*>(xr), scale, reinterpret_cast<float*>(o), C,
                                         double(up * steps), half, a_max, level.data());
#endif
            for (; c < C; ++c) {
                const float xv = float(xr[c]);
                float a = std::fabs(xv) / scale[c];
                if (!(a == a)) { o[c] = static_cast<X>(a); continue; }  // NaN in, NaN out
                a = std::min(a, a_max);
                double q = double(a) * up;
                if (T != 1) q *= steps;
                const int64_t qi = int64_t(std::floor(q + half));
                o[c] = static_cast<X>(std::copysign(level[qi] * double(scale[c]), double(xv)));
            }
        }
    });
}

at::Tensor mhse_decode(at::Tensor x, at::Tensor scale, int64_t T, int64_t layers, int64_t n_int, bool init_half,
                       double a_max) {
    const char* op = "mhse_decode";
    check_floats(x, op, "x");
    check_tensor(scale, op, "scale", {at::kFloat});
    TORCH_CHECK(scale.numel() == 1 || (x.dim() > 0 && scale.numel() == x.size(-1)), op,
                ": scale must hold 1 value or one per channel of x's last dimension (shapes)");
    TORCH_CHECK(T >= 1 && layers >= 1 && layers <= 24 && n_int >= 0 && n_int <= layers && std::isfinite(a_max)
                && a_max > 0, op, ": T >= 1, 1 <= layers <= 24, 0 <= n_int <= layers and a finite a_max > 0");
    // the table of decoded levels below has q_top + 1 entries
    TORCH_CHECK(a_max * std::ldexp(1.0, int(layers - n_int)) * double(T) <= double(1 << 24), op,
                ": a_max 2^(layers - n_int) T must be at most 2^24 (the table of levels)");
    auto out = at::empty_like(x);
    if (x.numel() == 0) return out;
    const int64_t n = x.numel(), C = x.dim() > 0 ? x.size(-1) : 1;
    std::vector<float> per_channel(C, scale.data_ptr<float>()[0]);  // one scale: the same for every channel
    if (scale.numel() == C) std::copy(scale.data_ptr<float>(), scale.data_ptr<float>() + C, per_channel.begin());
    for (float v : per_channel) TORCH_CHECK(std::isfinite(v) && v > 0.f, op, ": every scale must be finite and > 0");
    const float* sp = per_channel.data();
    const float am = float(a_max);
    if (x.scalar_type() == at::kFloat)
        mhse_decode_impl(x.data_ptr<float>(), sp, out.data_ptr<float>(), n, C, T, layers, n_int, init_half, am);
    else if (x.scalar_type() == at::kBFloat16)
        mhse_decode_impl(x.data_ptr<at::BFloat16>(), sp, out.data_ptr<at::BFloat16>(), n, C, T, layers, n_int,
                         init_half, am);
    else
        mhse_decode_impl(x.data_ptr<at::Half>(), sp, out.data_ptr<at::Half>(), n, C, T, layers, n_int, init_half, am);
    return out;
}
