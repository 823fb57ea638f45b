"""Recurrence kernels in plain torch: WKV7 (RWKV-7), WKV6 (RWKV-6) and WKV4 (RWKV-4 / SpikeGPT).

Each op has a naive token loop (the reference) and a fast form with the same signature, behind a
dispatcher (``wkv7``, ``wkv6``, ``wkv4``). Note that the dispatcher functions shadow their submodules as
attributes of this package; reach a module itself with ``importlib.import_module``.
"""

from .wkv4 import WKV4State, wkv4, wkv4_empty_state, wkv4_naive, wkv4_parallel
from .wkv6 import wkv6, wkv6_chunked, wkv6_naive
from .wkv7 import wkv7, wkv7_chunked, wkv7_naive, wkv7_step

__all__ = ["wkv7", "wkv7_naive", "wkv7_step", "wkv7_chunked", "wkv6", "wkv6_naive", "wkv6_chunked", "wkv4", "wkv4_naive", "wkv4_parallel", "wkv4_empty_state", "WKV4State"]
