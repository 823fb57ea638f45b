// The ops, as torch.ops.spikelm_cpu.*: their schemas (spikelm/ops/kernels.py registers a fake
// implementation of each for torch.compile) and their CPU implementations (the other files).
#include "spikelm.h"

#include <torch/library.h>

TORCH_LIBRARY(spikelm_cpu, m) {
    m.def("set_avx2(bool allowed) -> bool");
    m.def("wkv6_forward(Tensor r, Tensor k, Tensor v, Tensor logw, Tensor u, Tensor(a!) s) -> Tensor");
    m.def("gemv(Tensor x, Tensor w) -> Tensor");
    m.def("gemv_t(Tensor x, Tensor b, Tensor? c=None) -> Tensor");
    m.def("rwkv6_block_step(Tensor x, Tensor att_shift, Tensor wkv, Tensor ffn_shift, Tensor[] p, float ln_eps, float gn_eps) -> Tensor[]");
    m.def("rwkv6_block_step_params() -> (str[], int[])");
    m.def("token_lerp(Tensor x, Tensor shift, Tensor maa, Tensor? lora=None) -> Tensor");
    m.def("rwkv6_decay_(Tensor(a!) d, Tensor time_decay, float floor) -> Tensor(a!)");
    m.def("silu_gate_(Tensor y, Tensor(a!) g) -> Tensor(a!)");
    m.def("relu_square_(Tensor(a!) k) -> Tensor(a!)");
    m.def("sigmoid_gate_(Tensor(a!) r, Tensor v) -> Tensor(a!)");
    m.def("mhse_decode(Tensor x, Tensor scale, int T, int layers, int n_int, bool init_half, float a_max) -> Tensor");
    m.def("level_histogram(Tensor q, Tensor x, Tensor unit, int layers) -> Tensor");
}
TORCH_LIBRARY_IMPL(spikelm_cpu, CPU, m) {
    m.impl("wkv6_forward", &wkv6_forward);
    m.impl("gemv", &gemv);
    m.impl("gemv_t", &gemv_t);
    m.impl("rwkv6_block_step", &rwkv6_block_step);
    m.impl("token_lerp", &token_lerp);
    m.impl("rwkv6_decay_", &rwkv6_decay_);
    m.impl("silu_gate_", &silu_gate_);
    m.impl("relu_square_", &relu_square_);
    m.impl("sigmoid_gate_", &sigmoid_gate_);
    m.impl("mhse_decode", &mhse_decode);
    m.impl("level_histogram", &level_histogram);
}
TORCH_LIBRARY_IMPL(spikelm_cpu, CatchAll, m) {
    m.impl("set_avx2", &set_avx2);
    m.impl("rwkv6_block_step_params", &rwkv6_block_step_params);
}
