"""Atrous (dilated) convolutions on feature maps smaller than their dilation: the centre tap is the whole convolution.

EMD's encoder runs at output stride 16 (paper §III-D, DeepLabv3+), and its ASPP has three atrous separable 3×3
convolutions with rates 6, 12 and 18 (reference-facts §C). On a map of height and width at most ``d`` — the ``cpu``
preset's 64-px faces give a 4×4 map at stride 16 — every off-centre tap of a 3×3 kernel with dilation ``d`` and
"same" zero padding ``d`` reads padding, so the convolution *is* a 1×1 convolution with the kernel's centre weights
(DeepLabv3 §3.3 makes the same observation: "when the rate value becomes larger … the 3×3 filter … degenerates to a
simple 1×1 filter since only the center filter weight is effective"). oneDNN does not know that and runs a dilated
depthwise kernel whose backward pass is ~10× slower than the 1×1 one (``benchmarks/atrous.py``).

:class:`AtrousConv2d` is an ``nn.Conv2d`` (same parameters, same ``state_dict`` keys, same results up to the order of
floating-point sums; the off-centre weights get zero gradients, as before) that takes the 1×1 path when the map is
that small and is ``nn.Conv2d`` otherwise (the ``paper`` preset's 299-px input gives a 19×19 map: rates 6, 12 and 18
all run dilated). :func:`use_centre_tap` swaps it in for every eligible convolution of a network (stride 1, odd
square kernel, equal dilation > 1, zero padding ``dilation·(k−1)/2``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["AtrousConv2d", "use_centre_tap"]


class AtrousConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with stride 1, an odd square kernel, dilation ``d`` > 1 and zero padding ``d·(k−1)/2``.

    ``forward(x)``: ``x`` (N, C, H, W) → (N, C_out, H, W); when ``H <= d`` and ``W <= d`` it is the 1×1
    convolution with the centre weights ``weight[:, :, k//2, k//2]`` (module docstring), else ``nn.Conv2d.forward``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, r = self.dilation[0], self.kernel_size[0] // 2
        if x.shape[-2] <= d and x.shape[-1] <= d:
            return F.conv2d(x, self.weight[:, :, r:r + 1, r:r + 1], self.bias, groups=self.groups)
        return super().forward(x)


def _eligible(m: nn.Module) -> bool:
    if type(m) is not nn.Conv2d or m.padding_mode != "zeros":
        return False
    (kh, kw), (dh, dw) = m.kernel_size, m.dilation
    return (kh == kw and kh % 2 == 1 and dh == dw and dh > 1 and tuple(m.stride) == (1, 1)
            and tuple(m.padding) == (dh * (kh // 2),) * 2)


def use_centre_tap(model: nn.Module) -> int:
    """Replace, in place, every eligible ``nn.Conv2d`` of ``model`` (module docstring) by an :class:`AtrousConv2d`
    holding the *same* parameter tensors (an optimiser built before or after sees the same parameters). Returns the
    number replaced."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not _eligible(child):
                continue
            new = AtrousConv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                               padding=child.padding, dilation=child.dilation, groups=child.groups,
                               bias=child.bias is not None, device="meta")
            new.weight, new.bias = child.weight, child.bias
            new.train(child.training)
            setattr(parent, name, new)
            swapped += 1
    return swapped
