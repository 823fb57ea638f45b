// The elementwise passes of RWKV-6's time mix and channel mix (spikelm.ops.rwkv6; their twins are
// its tensor operations). Each op does in one pass over memory what the tensor operations do in two
// to five. In float32: the same arithmetic in the same order (no contraction into FMAs). In bf16 or
// fp16 (the activations' dtype A): the values widened to float32, the same float32 arithmetic, each
// output rounded once to A (to nearest even), where the tensor operations round after each of their
// steps; only exp comes from a vectorised polynomial (the header's exp8) where torch uses its own.
#include "spikelm.h"

// ---- 8 float32 values rounded to an activation dtype (to nearest even; NaN stays NaN): the
// inverse of the header's widen8.
#ifdef SPIKELM_X86
SPIKELM_AVX2 static inline void narrow8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
SPIKELM_AVX2 static inline void narrow8(at::BFloat16* p, __m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i hi = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan), 16);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(hi, hi), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
SPIKELM_AVX2 static inline void narrow8(at::Half* p, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

// f(A{}) for the activation dtype t: float32, bfloat16 or float16
template <typename F>
static void by_activation_dtype(at::ScalarType t, const char* op, F&& f) {
    if (t == at::kFloat) f(float{});
    else if (t == at::kBFloat16) f(at::BFloat16{});
    else if (t == at::kHalf) f(at::Half{});
    else TORCH_CHECK(false, op, ": float32, bfloat16 or float16 tensors");
}

// ---- token_lerp: out[g, b, t] = x[b, t] + (prev - x[b, t]) * (maa[g] + lora[g, b, t]) where prev is
// x[b, t - 1], or shift[b] at t = 0 (without lora: maa[g] alone). The ddlerp's mixes of the time mix
// (five targets with their LoRA, or x's own maa_x) and the channel mix's two, each in one pass.
template <typename A>
static void lerp_tail(const A* x, const A* prev, const A* m, const A* l, A* o, int64_t c, int64_t C) {
    for (; c < C; ++c) {
        const float xc = float(x[c]), mc = l ? float(m[c]) + float(l[c]) : float(m[c]);
        o[c] = A(xc + (float(prev[c]) - xc) * mc);
    }
}

#ifdef SPIKELM_X86
template <typename A>
SPIKELM_AVX2 static void lerp_row_avx2(const A* x, const A* prev, const A* m,
                                                                   const A* l, A* o, int64_t C) {
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
        const __m256 xv = widen8(x + c);
        __m256 mv = widen8(m + c);
        if (l) mv = _mm256_add_ps(mv, widen8(l + c));
        const __m256 xx = _mm256_sub_ps(widen8(prev + c), xv);
        narrow8(o + c, _mm256_add_ps(xv, _mm256_mul_ps(xx, mv)));
    }
    lerp_tail(x, prev, m, l, o, c, C);
}
#endif

template <typename A>
static void lerp_row(const A* x, const A* prev, const A* m, const A* l, A* o, int64_t C) {
#ifdef SPIKELM_X86
    if (has_avx2_fma()) { lerp_row_avx2(x, prev, m, l, o, C); return; }
#endif
    lerp_tail(x, prev, m, l, o, 0, C);
}

// x (B, T, C), shift (B, C), maa (G, C), lora none or (G, B, T, C): contiguous, one activation dtype.
// Returns (G, B, T, C) in that dtype (lora's own memory where given: each value is read before it
// is written).
at::Tensor token_lerp(at::Tensor x, at::Tensor shift, at::Tensor maa, c10::optional<at::Tensor> lora) {
    const auto dt = x.scalar_type();
    TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "token_lerp: x (B, T, C) contiguous");
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2), G = maa.size(0);
    TORCH_CHECK(shift.scalar_type() == dt && shift.is_contiguous() && shift.numel() == B * C &&
                maa.scalar_type() == dt && maa.is_contiguous() && maa.numel() == G * C,
                "token_lerp: shift (B, C), maa (G, C) contiguous, in x's dtype");
    const bool has_l = lora.has_value();
    if (has_l)
        TORCH_CHECK(lora->scalar_type() == dt && lora->is_contiguous() && lora->numel() == G * B * T * C,
                    "token_lerp: lora (G, B, T, C) contiguous, in x's dtype");
    auto out = has_l ? *lora : at::empty({G, B, T, C}, x.options());
    by_activation_dtype(dt, "token_lerp", [&](auto tag) {
        using A = decltype(tag);
        const A *xp = x.data_ptr<A>(), *sp = shift.data_ptr<A>(), *mp = maa.data_ptr<A>();
        const A* lp = has_l ? lora->data_ptr<A>() : nullptr;
        A* op = out.data_ptr<A>();
        at::parallel_for(0, G * B * T, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
            for (int64_t row = begin; row < end; ++row) {
                const int64_t g = row / (B * T), bt = row % (B * T), b = bt / T, t = bt % T;
                const A* xr = xp + bt * C;
                const A* prev = t > 0 ? xr - C : sp + b * C;
                lerp_row(xr, prev, mp + g * C, lp ? lp + row * C : nullptr, op + row * C, C);
            }
        });
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
template <typename A>
SPIKELM_AVX2 static int64_t silu_gate_avx2(const float* y, A* g, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = widen8(g + i);
        const __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, exp8(_mm256_xor_ps(gv, sign))));
        narrow8(g + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), s));
    }
    return i;
}
#endif

// y: float32 (GroupNorm's output), g: the gate's output, float32, bf16 or fp16; contiguous, one size;
// g updated and returned.
at::Tensor silu_gate_(at::Tensor y, at::Tensor g) {
    TORCH_CHECK(y.scalar_type() == at::kFloat && y.is_contiguous() && g.is_contiguous() && y.numel() == g.numel(),
                "silu_gate_: y float32 and g contiguous, one size");
    const float* yp = y.data_ptr<float>();
    by_activation_dtype(g.scalar_type(), "silu_gate_", [&](auto tag) {
        using A = decltype(tag);
        A* gp = g.data_ptr<A>();
        at::parallel_for(0, g.numel(), 16384, [&](int64_t begin, int64_t end) {
            int64_t i = begin;
#ifdef SPIKELM_X86
            if (has_avx2_fma()) i = begin + silu_gate_avx2(yp + begin, gp + begin, end - begin);
#endif
            for (; i < end; ++i) {
                const float gi = float(gp[i]);
                gp[i] = A(yp[i] * (gi / (1.f + std::exp(-gi))));
            }
        });
    });
    return g;
}

// ---- relu_square_: k <- relu(k)^2 in place (the channel mix's activation), any contiguous tensor of
// an activation dtype; NaN stays NaN, as torch.relu keeps it.
#ifdef SPIKELM_X86
template <typename A>
SPIKELM_AVX2 static int64_t relu_square_avx2(A* k, int64_t n) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 r = _mm256_max_ps(zero, widen8(k + i));  // the second operand where NaN
        narrow8(k + i, _mm256_mul_ps(r, r));
    }
    return i;
}
#endif

at::Tensor relu_square_(at::Tensor k) {
    TORCH_CHECK(k.is_contiguous(), "relu_square_: contiguous");
    by_activation_dtype(k.scalar_type(), "relu_square_", [&](auto tag) {
        using A = decltype(tag);
        A* kp = k.data_ptr<A>();
        at::parallel_for(0, k.numel(), 32768, [&](int64_t begin, int64_t end) {
            int64_t i = begin;
#ifdef SPIKELM_X86
            if (has_avx2_fma()) i = begin + relu_square_avx2(kp + begin, end - begin);
#endif
            for (; i < end; ++i) {
                const float ki = float(kp[i]);
                const float r = std::isnan(ki) || ki > 0.f ? ki : 0.f;
                kp[i] = A(r * r);
            }
        });
    });
    return k;
}

// ---- sigmoid_gate_: r <- sigmoid(r) * v in place (the channel mix's output; sigmoid(r) = 1 / (1 + exp(-r))).
#ifdef SPIKELM_X86
template <typename A>
SPIKELM_AVX2 static int64_t sigmoid_gate_avx2(A* r, const A* v, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_xor_ps(widen8(r + i), sign))));
        narrow8(r + i, _mm256_mul_ps(s, widen8(v + i)));
    }
    return i;
}
#endif

// r, v: contiguous, one size and one activation dtype; r updated and returned.
at::Tensor sigmoid_gate_(at::Tensor r, at::Tensor v) {
    TORCH_CHECK(v.scalar_type() == r.scalar_type() && r.is_contiguous() && v.is_contiguous() && v.numel() == r.numel(),
                "sigmoid_gate_: r and v contiguous, one size and dtype");
    by_activation_dtype(r.scalar_type(), "sigmoid_gate_", [&](auto tag) {
        using A = decltype(tag);
        const A* vp = v.data_ptr<A>();
        A* rp = r.data_ptr<A>();
        at::parallel_for(0, r.numel(), 16384, [&](int64_t begin, int64_t end) {
            int64_t i = begin;
#ifdef SPIKELM_X86
            if (has_avx2_fma()) i = begin + sigmoid_gate_avx2(rp + begin, vp + begin, end - begin);
#endif
            for (; i < end; ++i) rp[i] = A((1.f / (1.f + std::exp(-float(rp[i])))) * float(vp[i]));
        });
    });
    return r;
}
