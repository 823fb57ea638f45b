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
    m.def("level_histogram(Tensor q, Tensor x, Tensor unit, int layers) -> Tensor");
}
TORCH_LIBRARY_IMPL(spikelm_cpu, CPU, m) {
    m.impl("wkv6_forward", &wkv6_forward);
    m.impl("gemv", &gemv);
    m.impl("gemv_t", &gemv_t);
    m.impl("rwkv6_block_step", &rwkv6_block_step);
    m.impl("level_histogram", &level_histogram);
}
TORCH_LIBRARY_IMPL(spikelm_cpu, CatchAll, m) {
    m.impl("set_avx2", &set_avx2);
    m.impl("rwkv6_block_step_params", &rwkv6_block_step_params);
}
