"""The ops of spikelm's models, and the one room that picks their implementations.

Recurrences: WKV7 (RWKV-7), WKV6 (RWKV-6) and WKV4 (RWKV-4 / SpikeGPT), each a naive token loop (the
reference) and a fast form with the same signature, behind a dispatcher (``wkv7``, ``wkv6``,
``wkv4``). Products (:mod:`.linear`), the RWKV-6 block's decoding step (:mod:`.rwkv6`), spike
decoding and counting (:mod:`.spikes`), the fused cross-entropy and the neuron scans.

Every op with more than one implementation (tensor operations, ``torch.compile``, a C++ kernel, a
CUDA library: flash-linear-attention) takes ``backend=`` (:mod:`.backend`: ``torch``, ``compile``,
``cpp``, ``auto``), settable per call, per model (:func:`set_backend`) and per process
(``SPIKELM_BACKEND``). The C++ kernels are built and loaded by :mod:`.kernels` alone; nothing
outside this package imports it (``spikelm kernels`` reaches its cache through the functions
exported here).

Note that the dispatcher functions shadow their submodules as attributes of this package; reach
a module itself with ``importlib.import_module``.
"""

from .backend import BACKENDS, OPS, cpu_paths, set_backend
from .kernels import KernelBuildError, build_kernels, clear_kernels, kernels_status
from .wkv4 import WKV4State, wkv4, wkv4_empty_state, wkv4_naive, wkv4_parallel
from .wkv6 import wkv6, wkv6_chunked, wkv6_naive
from .wkv7 import wkv7, wkv7_chunked, wkv7_naive, wkv7_step

__all__ = ["wkv7", "wkv7_naive", "wkv7_step", "wkv7_chunked", "wkv6", "wkv6_naive", "wkv6_chunked", "wkv4", "wkv4_naive",
           "wkv4_parallel", "wkv4_empty_state", "WKV4State", "BACKENDS", "OPS", "set_backend",
           "cpu_paths", "build_kernels", "kernels_status", "clear_kernels", "KernelBuildError"]
