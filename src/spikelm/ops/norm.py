"""LayerNorm and GroupNorm that normalise in float32 whatever the dtype of their parameters.

``nn.LayerNorm`` / ``nn.GroupNorm`` with bf16 parameters round twice (the normalised value, then
the affine map) and refuse a float32 input. These subclasses (same parameters, state dict and
``isinstance``) compute the statistics and the affine map in float32 and round once, to the
input's dtype. So a bf16 model's GroupNorm can take the WKV output in float32 (as the RWKV-LM and
``rwkv`` package code does) and return it unrounded, and its LayerNorms round once. A float32
model takes torch's own call unchanged. The naive twins are the float64 ``F.layer_norm`` /
``F.group_norm`` (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerNorm", "GroupNorm"]


def _f32(p: Tensor | None) -> Tensor | None:
    return None if p is None else p.float()


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32 and returned in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and (self.weight is None or self.weight.dtype == torch.float32):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        y = F.layer_norm(x.float(), self.normalized_shape, _f32(self.weight), _f32(self.bias), self.eps)
        return y.to(x.dtype)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computed in float32 and returned in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and (self.weight is None or self.weight.dtype == torch.float32):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        y = F.group_norm(x.float(), self.num_groups, _f32(self.weight), _f32(self.bias), self.eps)
        return y.to(x.dtype)
