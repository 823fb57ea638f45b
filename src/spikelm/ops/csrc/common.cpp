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
