// spikelm's compiled CPU kernels, part 5 (after block_step.cpp): the elementwise passes of RWKV-6's
// time mix and channel mix (spikelm.models.rwkv6, float32 without a gradient). Each op does in one
// pass over memory what the modules' tensor operations do in two to five, the same float32
// arithmetic in the same order (no contraction into FMAs); only exp comes from a vectorised
// polynomial (common.cpp's exp8: within 2 ulp of the exact exp; 0 below the smallest normal
// result) where torch uses its own.

// ---- token_lerp: out[g, b, t] = x[b, t] + (prev - x[b, t]) * (maa[g] + lora[g, b, t]) where prev is
// x[b, t - 1], or shift[b] at t = 0 (without lora: maa[g] alone). The ddlerp's mixes of the time mix
// (five targets with their LoRA, or x's own maa_x) and the channel mix's two, each in one pass.
#ifdef SPIKELM_X86
__attribute__((target("avx2,fma"))) static void lerp_row_avx2(const float* x, const float* prev, const float* m,
                                                              const float* l, float* o, int64_t C) {
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
        const __m256 xv = _mm256_loadu_ps(x + c);
        __m256 mv = _mm256_loadu_ps(m + c);
        if (l) mv = _mm256_add_ps(mv, _mm256_loadu_ps(l + c));
        const __m256 xx = _mm256_sub_ps(_mm256_loadu_ps(prev + c), xv);
        _mm256_storeu_ps(o + c, _mm256_add_ps(xv, _mm256_mul_ps(xx, mv)));
    }
    for (; c < C; ++c) o[c] = x[c] + (prev[c] - x[c]) * (l ? m[c] + l[c] : m[c]);
}
#endif

static void lerp_row(const float* x, const float* prev, const float* m, const float* l, float* o, int64_t C) {
#ifdef SPIKELM_X86
    if (has_avx2_fma()) { lerp_row_avx2(x, prev, m, l, o, C); return; }
#endif
    for (int64_t c = 0; c < C; ++c) o[c] = x[c] + (prev[c] - x[c]) * (l ? m[c] + l[c] : m[c]);
}

// x (B, T, C), shift (B, C), maa (G, C), lora none or (G, B, T, C): float32 contiguous. Returns
// (G, B, T, C) float32 (lora's own memory where given: each value is read before it is written).
at::Tensor token_lerp(at::Tensor x, at::Tensor shift, at::Tensor maa, c10::optional<at::Tensor> lora) {
    TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && x.is_contiguous(), "token_lerp: x (B, T, C) float32");
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2), G = maa.size(0);
    TORCH_CHECK(shift.scalar_type() == at::kFloat && shift.is_contiguous() && shift.numel() == B * C &&
                maa.scalar_type() == at::kFloat && maa.is_contiguous() && maa.numel() == G * C,
                "token_lerp: shift (B, C), maa (G, C) float32");
    const bool has_l = lora.has_value();
    if (has_l)
        TORCH_CHECK(lora->scalar_type() == at::kFloat && lora->is_contiguous() && lora->numel() == G * B * T * C,
                    "token_lerp: lora (G, B, T, C) float32");
    auto out = has_l ? *lora : at::empty({G, B, T, C}, x.options());
    const float *xp = x.data_ptr<float>(), *sp = shift.data_ptr<float>(), *mp = maa.data_ptr<float>();
    const float* lp = has_l ? lora->data_ptr<float>() : nullptr;
    float* op = out.data_ptr<float>();
    at::parallel_for(0, G * B * T, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
            const int64_t g = row / (B * T), bt = row % (B * T), b = bt / T, t = bt % T;
            const float* xr = xp + bt * C;
            const float* prev = t > 0 ? xr - C : sp + b * C;
            lerp_row(xr, prev, mp + g * C, lp ? lp + row * C : nullptr, op + row * C, C);
        }
    });
    return out;
}

// ---- rwkv6_decay_: d <- max(-exp(d + time_decay), floor) in place: the log-decays passed to WKV.
#ifdef SPIKELM_X86
__attribute__((target("avx2,fma"))) static int64_t decay_row_avx2(float* d, const float* td, float floor, int64_t A) {
    const __m256 f = _mm256_set1_ps(floor), sign = _mm256_set1_ps(-0.f);
    int64_t a = 0;
    for (; a + 8 <= A; a += 8) {
        const __m256 e = exp8(_mm256_add_ps(_mm256_loadu_ps(d + a), _mm256_loadu_ps(td + a)));
        _mm256_storeu_ps(d + a, _mm256_max_ps(f, _mm256_xor_ps(e, sign)));  // max(floor, NaN) is NaN
    }
    return a;
}
#endif

// d (R, A) float32 contiguous, updated and returned; time_decay (A,) float32.
at::Tensor rwkv6_decay_(at::Tensor d, at::Tensor time_decay, double floor) {
    TORCH_CHECK(d.scalar_type() == at::kFloat && d.is_contiguous() && time_decay.scalar_type() == at::kFloat &&
                time_decay.is_contiguous() && d.size(-1) == time_decay.numel(), "rwkv6_decay_: shapes");
    const int64_t A = time_decay.numel(), R = d.numel() / std::max<int64_t>(A, 1);
    float* dp = d.data_ptr<float>();
    const float* tp = time_decay.data_ptr<float>();
    const float f = float(floor);
    at::parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(A, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            float* row = dp + r * A;
            int64_t a = 0;
#ifdef SPIKELM_X86
            if (has_avx2_fma()) a = decay_row_avx2(row, tp, f, A);
#endif
            for (; a < A; ++a) row[a] = std::max(-std::exp(row[a] + tp[a]), f);
        }
    });
    return d;
}

// ---- silu_gate_: g <- y * silu(g) in place (the time mix's GroupNorm output times its gate's SiLU;
// silu(g) = g / (1 + exp(-g)), as torch computes it).
#ifdef SPIKELM_X86
__attribute__((target("avx2,fma"))) static int64_t silu_gate_avx2(const float* y, float* g, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, exp8(_mm256_xor_ps(gv, sign))));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), s));
    }
    return i;
}
#endif

// y, g: float32 contiguous of one size; g updated and returned.
at::Tensor silu_gate_(at::Tensor y, at::Tensor g) {
    TORCH_CHECK(y.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat && y.is_contiguous() &&
                g.is_contiguous() && y.numel() == g.numel(), "silu_gate_: y and g float32 contiguous, one size");
    const float* yp = y.data_ptr<float>();
    float* gp = g.data_ptr<float>();
    at::parallel_for(0, g.numel(), 16384, [&](int64_t begin, int64_t end) {
        int64_t i = begin;
#ifdef SPIKELM_X86
        if (has_avx2_fma()) i = begin + silu_gate_avx2(yp + begin, gp + begin, end - begin);
#endif
        for (; i < end; ++i) gp[i] = yp[i] * (gp[i] / (1.f + std::exp(-gp[i])));
    });
    return g;
}

// ---- relu_square_: k <- relu(k)^2 in place (the channel mix's activation), any contiguous float32;
// NaN stays NaN, as torch.relu keeps it.
#ifdef SPIKELM_X86
__attribute__((target("avx2,fma"))) static int64_t relu_square_avx2(float* k, int64_t n) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 r = _mm256_max_ps(zero, _mm256_loadu_ps(k + i));  // the second operand where NaN
        _mm256_storeu_ps(k + i, _mm256_mul_ps(r, r));
    }
    return i;
}
#endif

at::Tensor relu_square_(at::Tensor k) {
    TORCH_CHECK(k.scalar_type() == at::kFloat && k.is_contiguous(), "relu_square_: float32");
    float* kp = k.data_ptr<float>();
    at::parallel_for(0, k.numel(), 32768, [&](int64_t begin, int64_t end) {
        int64_t i = begin;
#ifdef SPIKELM_X86
        if (has_avx2_fma()) i = begin + relu_square_avx2(kp + begin, end - begin);
#endif
        for (; i < end; ++i) {
            const float r = std::isnan(kp[i]) || kp[i] > 0.f ? kp[i] : 0.f;
            kp[i] = r * r;
        }
    });
    return k;
}

// ---- sigmoid_gate_: r <- sigmoid(r) * v in place (the channel mix's output; sigmoid(r) = 1 / (1 + exp(-r))).
#ifdef SPIKELM_X86
__attribute__((target("avx2,fma"))) static int64_t sigmoid_gate_avx2(float* r, const float* v, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_xor_ps(_mm256_loadu_ps(r + i), sign))));
        _mm256_storeu_ps(r + i, _mm256_mul_ps(s, _mm256_loadu_ps(v + i)));
    }
    return i;
}
#endif

// r, v: float32 contiguous of one size; r updated and returned.
at::Tensor sigmoid_gate_(at::Tensor r, at::Tensor v) {
    TORCH_CHECK(r.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && r.is_contiguous() &&
                v.is_contiguous() && v.numel() == r.numel(), "sigmoid_gate_: r and v float32 contiguous, one size");
    const float* vp = v.data_ptr<float>();
    float* rp = r.data_ptr<float>();
    at::parallel_for(0, r.numel(), 16384, [&](int64_t begin, int64_t end) {
        int64_t i = begin;
#ifdef SPIKELM_X86
        if (has_avx2_fma()) i = begin + sigmoid_gate_avx2(rp + begin, vp + begin, end - begin);
#endif
        for (; i < end; ++i) rp[i] = (1.f / (1.f + std::exp(-rp[i]))) * vp[i];
    });
    return r;
}
