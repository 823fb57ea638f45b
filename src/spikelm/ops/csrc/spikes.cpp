// The histogram of spike-encoder levels (spikelm.ops.spikes.level_histogram; its twin: the tensor
// operations of spikelm.energy.spike_counts).
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
