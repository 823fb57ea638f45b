// spikelm's C++ kernels: what every file uses. Each .cpp file includes this header and is compiled
// on its own; spikelm/ops/kernels.py links them into one library, and register.cpp declares the ops
// (torch.ops.spikelm_cpu.*). Which op runs where is decided in Python (spikelm/ops/backend.py).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

// x86-64 with GCC or Clang: the loops get a second build for AVX2 + FMA (+ F16C), chosen at run
// time, so the library stays portable to any x86-64 CPU (and builds elsewhere without it).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SPIKELM_X86 1
#include <immintrin.h>
#include <atomic>
inline std::atomic<bool> avx2_allowed{true};  // set_avx2(false): the portable loops (their tests)
inline bool has_avx2_fma() {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                           && __builtin_cpu_supports("f16c");
    return ok && avx2_allowed.load(std::memory_order_relaxed);
}
#define SPIKELM_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

// ---- argument checks: every op checks what it reads, so a wrong tensor is an error, never a crash.
inline void check_tensor(const at::Tensor& t, const char* op, const char* name, std::initializer_list<at::ScalarType> dtypes) {
    TORCH_CHECK(t.defined() && t.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
    bool ok = false;
    for (auto d : dtypes) ok = ok || t.scalar_type() == d;
    TORCH_CHECK(ok, op, ": ", name, " has dtype ", t.scalar_type(), ", which this op does not take");
}
inline void check_numel(const at::Tensor& t, int64_t n, const char* op, const char* name) {
    TORCH_CHECK(t.numel() == n, op, ": ", name, " has ", t.numel(), " values, expected ", n);
}
inline void check_floats(const at::Tensor& t, const char* op, const char* name) {  // float32, bf16 or fp16
    check_tensor(t, op, name, {at::kFloat, at::kBFloat16, at::kHalf});
}

// x's values as float32: its own memory where it is a contiguous float32 tensor, else widened
// into buf (bf16 / fp16, without a torch operation per call), else through a cast kept in keep.
inline const float* float_values(const at::Tensor& x, std::vector<float>& buf, at::Tensor& keep) {
    const int64_t n = x.numel();
    if (x.is_contiguous() && x.scalar_type() == at::kFloat) return x.data_ptr<float>();
    if (x.is_contiguous() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf)) {
        buf.resize(n);
        if (x.scalar_type() == at::kBFloat16) {
            const at::BFloat16* p = x.data_ptr<at::BFloat16>();
            for (int64_t i = 0; i < n; ++i) buf[i] = float(p[i]);
        } else {
            const at::Half* p = x.data_ptr<at::Half>();
            for (int64_t i = 0; i < n; ++i) buf[i] = float(p[i]);
        }
        return buf.data();
    }
    keep = x.to(at::kFloat).contiguous();
    return keep.data_ptr<float>();
}

// ---- one-row products (products.cpp), also used by the block step: float32 sums of exact products,
// each output rounded once to Out. W: float, at::BFloat16 or at::Half; Out: float or W.
// y = W x for W (O, I) contiguous:
template <typename W, typename Out>
void gemv_rows(const W* w, const float* x, int64_t O, int64_t I, Out* y);
// G products y_g = x_g @ b_g (+ c_g) for b (G, I, O) contiguous (the LoRA order), c optional:
template <typename W, typename Out>
void gemv_cols(const W* b, const float* x, const float* c, int64_t G, int64_t I, int64_t O, Out* y);

// ---- the WKV6 recurrence (wkv6.cpp), also used by the block step. One token of one head:
// y = r S + bonus v, then S <- diag(w) S + k v^T (S: N x N, [key][value], in place; w the decays).
using wkv6_token_fn = void (*)(const float*, const float*, const float*, const float*, float, float*, float*,
                               int64_t, float*);
wkv6_token_fn wkv6_token_here();  // the AVX2 build where it runs, else the portable one
// T tokens of one (batch row, head): r, k, v, w point at token 0 (stride between tokens), S in place.
void wkv6_head(const float* rp, const float* kp, const float* vp, const float* wp, const float* uh, float* S,
               float* yp, int64_t T, int64_t stride, int64_t N, float* acc, wkv6_token_fn token);

// ---- the ops (register.cpp declares them as torch.ops.spikelm_cpu.*)
bool set_avx2(bool allowed);
at::Tensor wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor logw, at::Tensor u, at::Tensor s);
at::Tensor gemv(at::Tensor x, at::Tensor w);
at::Tensor gemv_t(at::Tensor x, at::Tensor b, c10::optional<at::Tensor> c);
std::vector<at::Tensor> rwkv6_block_step(at::Tensor x, at::Tensor att_shift, at::Tensor wkv, at::Tensor ffn_shift,
                                         std::vector<at::Tensor> p, double ln_eps, double gn_eps);
std::tuple<std::vector<std::string>, std::vector<int64_t>> rwkv6_block_step_params();
at::Tensor level_histogram(at::Tensor q, at::Tensor x, at::Tensor unit, int64_t layers);
