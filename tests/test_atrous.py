"""AtrousConv2d (emdlib/models/atrous.py): the centre-tap path is the same convolution, parameters are shared."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from emdlib.models.atrous import AtrousConv2d, use_centre_tap
from emdlib.models.emd import ASPP


@pytest.mark.parametrize("channels,groups,size,rate", [
    (6, 6, (4, 4), 6), (6, 6, (4, 4), 4), (6, 6, (3, 5), 6), (6, 1, (4, 4), 18), (6, 3, (2, 2), 12),
    (6, 6, (4, 4), 2), (6, 6, (19, 19), 6), (6, 1, (7, 5), 3)])
def test_same_values_and_gradients_as_the_dilated_convolution(channels, groups, size, rate):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 4 if groups == 1 else channels, 3, padding=rate, dilation=rate, groups=groups)
    x = torch.randn(2, channels, *size, requires_grad=True)
    grad_out = torch.randn(2, conv.out_channels, *size)
    ref = conv(x)
    ref_grads = torch.autograd.grad(ref, (x, conv.weight, conv.bias), grad_out)
    assert use_centre_tap(conv) == 0  # the module itself is not a child: wrap it to swap
    holder = nn.Sequential(conv)
    assert use_centre_tap(holder) == 1 and isinstance(holder[0], AtrousConv2d)
    assert holder[0].weight is conv.weight and holder[0].bias is conv.bias
    out = holder(x)
    grads = torch.autograd.grad(out, (x, holder[0].weight, holder[0].bias), grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    if max(size) <= rate:  # centre tap only: the off-centre weights get no gradient
        w_grad = grads[1].clone()
        w_grad[:, :, 1, 1] = 0
        assert torch.count_nonzero(w_grad) == 0


def test_centre_tap_hand_computed():
    """A 3×3 depthwise kernel with rate 4 on a 2×2 map: each output is the centre weight times the input + bias."""
    conv = AtrousConv2d(2, 2, 3, padding=4, dilation=4, groups=2)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(18.0).view(2, 1, 3, 3))
        conv.bias.copy_(torch.tensor([1.0, -1.0]))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.5, 0.0], [-1.0, 2.0]]]])
    expected = torch.stack([4.0 * x[0, 0] + 1.0, 13.0 * x[0, 1] - 1.0])[None]
    torch.testing.assert_close(conv(x), expected)


def test_only_eligible_convolutions_are_swapped():
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=2, dilation=2),           # yes
                        nn.Conv2d(3, 3, 3, padding=1),                       # undilated
                        nn.Conv2d(3, 3, 3, padding=2, dilation=2, stride=2),  # strided
                        nn.Conv2d(3, 3, 3, padding=1, dilation=2),           # not "same"
                        nn.Conv2d(3, 3, 3, padding=2, dilation=2, padding_mode="reflect"))
    keys = list(net.state_dict())
    assert use_centre_tap(net) == 1
    assert [type(m) for m in net] == [AtrousConv2d] + [nn.Conv2d] * 4
    assert list(net.state_dict()) == keys


def test_aspp_uses_it_and_keeps_its_state_dict_keys():
    aspp = ASPP(16, 8, rates=(6, 12, 18))
    assert sum(isinstance(m, AtrousConv2d) for m in aspp.modules()) == 3
    assert all(k.startswith(("branches.", "pool.", "project.")) for k in aspp.state_dict())
    x = torch.randn(2, 16, 4, 4)
    aspp.eval()
    out = aspp(x)
    for m in aspp.modules():  # the same weights as plain dilated convolutions
        if isinstance(m, AtrousConv2d):
            m.__class__ = nn.Conv2d
    torch.testing.assert_close(aspp(x), out, rtol=1e-5, atol=1e-5)
