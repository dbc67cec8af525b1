"""EMD manipulation stream (paper §III-D, §IV-B): DeepLabv3+ on timm's aligned Xception with the FER map injected.

Structure (reference-facts §C):

* **Encoder**: timm ``xception65`` (or ``xception41`` for small presets) at output stride 16. ImageNet weights come
  from timm (``pretrained=True``, HF hub) or a local weights file (``pretrained="path"``).
* **FER injection** (§III-D, "F_i = FM_i ⊕ FF_i"): the encoder's last convolution is the pointwise 1×1 conv of the
  last exit block's third separable conv (``blocks[-1].stack.conv3.conv_pw``, 1536 → 2048 channels; it is followed
  only by BN + ReLU). We cut the encoder just before it — ``conv_pw``, ``bn_pw`` and ``act_pw`` of that separable conv
  become ``nn.Identity`` so the timm encoder itself returns the 1536-channel feature *entering* the last conv — and
  rebuild that conv outside the encoder as :class:`LastConv`: the selected ESR map (Eq. 5, 512 channels) is
  bilinearly resized to the encoder grid, concatenated, and passed through a newly initialised 1×1 conv
  (1536 + 512 → 2048) + BN + ReLU. The depthwise half of that separable conv keeps its ImageNet weights. Replacing
  submodules (rather than patching ``forward``) keeps timm's own ``forward_intermediates`` usable unchanged.
* **ASPP** (rates 6/12/18 at OS16, image pooling, 256 channels each, 1×1 projection of the 5×256 concat) and the
  **decoder** (stride-4 feature projected to 48 channels, two 3×3 256-channel convs, 1×1 classifier) → mask logits
  bilinearly up-sampled to the input size. The 3×3 convs are atrous *separable* convs by default, as the paper
  states ("the SPP module consists of depthwise separable convolution layers") and DeepLabv3+ does for Xception.
* **Classifier**: global-average-pooled latent (output of the last conv, 2048 channels) → ``Linear(2048, 2)``
  (index 1 = fake; §IV-B "replacing the final fully connected layer with two outputs").

With ``fer=None`` the same class is the "XceptionNet" segmentation row of Table IV: :class:`LastConv` then has no
FER input and starts from the encoder's own (ImageNet) last-conv weights.

The FER stream (any module with ``select_branch(x) -> (fer_map (N,512,h,w), branch (N,), cls (N,))``, e.g.
:class:`emdlib.models.esr.ESR`) is frozen and always in eval mode (Algorithm 1: φ is learned separately).
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from emdlib.data.transforms import esr_input, xception_to_rgb01
from emdlib.models.atrous import use_centre_tap
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

FER_CHANNELS = 512  # channels of the ESR branch's last conv map (reference-facts §A.2)
LOW_LEVEL_INDEX = 1  # timm feature index of the stride-4, 256-channel entry-flow feature (reference-facts §C.3)


def create_encoder(name: str = "xception65", pretrained: bool | str | os.PathLike = False,
                   output_stride: int = 16) -> nn.Module:
    """timm aligned Xception without classifier; ``pretrained`` is False, True (timm/HF hub) or a local weights file
    (``.safetensors``, timm checkpoint or ``.pth`` read with ``weights_only=True``; :mod:`emdlib.pretrained`).

    Raises RuntimeError saying how to give a local file when the ImageNet weights cannot be downloaded (e.g.
    offline), FileNotFoundError / ValueError naming the file when a local file is absent, unreadable or does not fit.
    """
    from emdlib.pretrained import create_timm_model

    return create_timm_model(name, pretrained, num_classes=0, output_stride=output_stride)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1, separable: bool = False) -> nn.Sequential:
    """Conv → BN → ReLU; a 3×3 ``separable`` conv is depthwise (atrous) → BN → ReLU → pointwise → BN → ReLU."""
    pad = dilation * (kernel - 1) // 2
    if separable and kernel > 1:
        return nn.Sequential(
            nn.Conv2d(cin, cin, kernel, padding=pad, dilation=dilation, groups=cin, bias=False),
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class LastConv(nn.Module):
    """The encoder's last convolution, rebuilt for the FER concat (§III-D: ``F_i = FM_i ⊕ FF_i`` → remaining layers).

    ``forward(feature, fer_map)``: bilinearly resize ``fer_map`` to ``feature``'s grid, concatenate on channels, then
    1×1 conv → BN → ReLU (the layer type of the pointwise conv it replaces).
    """

    def __init__(self, in_channels: int, out_channels: int, fer_channels: int = 0, bn_eps: float = 1e-3):
        super().__init__()
        self.in_channels = in_channels
        self.fer_channels = fer_channels
        self.conv = nn.Conv2d(in_channels + fer_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.act = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, feature: torch.Tensor, fer_map: torch.Tensor | None = None) -> torch.Tensor:
        if self.fer_channels:
            if fer_map is None:
                raise ValueError("LastConv built for a FER map but none was given")
            fer_map = F.interpolate(fer_map.to(feature.dtype), size=feature.shape[-2:], mode="bilinear",
                                    align_corners=False)
            feature = torch.cat([feature, fer_map], dim=1)
        return self.act(self.bn(self.conv(feature)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3+, reference-facts §C.1): 1×1, three atrous 3×3 (rates), image pooling.

    The atrous convolutions are :class:`emdlib.models.atrous.AtrousConv2d`: on a map no larger than the rate (small
    presets' 4×4) only the centre tap reads anything but padding, and they run as the 1×1 convolutions they are then.
    """

    def __init__(self, in_channels: int, channels: int = 256, rates: tuple[int, ...] = (6, 12, 18),
                 separable: bool = True):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels, 1)]
            + [_conv_bn_relu(in_channels, channels, 3, dilation=r, separable=separable) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, channels, 1))
        self.project = _conv_bn_relu(channels * (len(rates) + 2), channels, 1)
        use_centre_tap(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(outs, dim=1))


class Decoder(nn.Module):
    """DeepLabv3+ decoder (reference-facts §C.1): low-level → 48 ch; concat with up-sampled ASPP; two 3×3 256-ch convs."""

    def __init__(self, low_channels: int, aspp_channels: int = 256, low_proj: int = 48, channels: int = 256,
                 num_outputs: int = 1, separable: bool = True):
        super().__init__()
        self.low = _conv_bn_relu(low_channels, low_proj, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(aspp_channels + low_proj, channels, 3, separable=separable),
            _conv_bn_relu(channels, channels, 3, separable=separable),
        )
        self.classifier = nn.Conv2d(channels, num_outputs, 1)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, low], dim=1)))


class EMD(DetectorNet):
    """EMD (§III-D): DeepLabv3+/aligned-Xception manipulation stream fed with the frozen FER stream's map (Eq. 5).

    ``forward(image, fer_image=None) -> DetectorOutput(logits (N,2), mask_logits (N,1,H,W), extras)``; ``extras``
    holds ``"latent"`` (N,2048) and, when a FER stream is attached, ``"fer_branch"``/``"fer_class"``. ``image``: RGB ``(x-0.5)/0.5``
    (:func:`emdlib.data.transforms.xception_input`); ``fer_image``: ESR input (96×96 BGR [0,1]); when omitted it is
    derived from ``image`` with :func:`emdlib.data.transforms.esr_input`.

    Args:
        fer: frozen FER stream with ``select_branch``; ``None`` gives the plain XceptionNet segmentation model.
        encoder: timm aligned-Xception name (``xception65`` as the paper; ``xception41`` for small presets).
        pretrained: ImageNet weights for the encoder: False, True (timm hub) or a local weights file.
        separable: atrous separable 3×3 convs in ASPP/decoder (DeepLabv3+ for Xception); False → plain 3×3 convs.
    """

    def __init__(self, fer: nn.Module | None = None, encoder: str = "xception65",
                 pretrained: bool | str | os.PathLike = False, output_stride: int = 16,
                 aspp_rates: tuple[int, ...] = (6, 12, 18), separable: bool = True, fer_channels: int = FER_CHANNELS,
                 fer_spec: dict | None = None):
        super().__init__()
        self.encoder_name = encoder
        self._arch = dict(encoder=encoder, output_stride=output_stride, aspp_rates=list(aspp_rates),
                          separable=separable, fer_channels=fer_channels)
        self._fer_spec = fer_spec
        self.encoder = create_encoder(encoder, pretrained, output_stride)
        last_sep = self.encoder.blocks[-1].stack[-1]  # SeparableConv2d: conv_dw → bn_dw → act_dw → conv_pw → bn_pw → act_pw
        old_pw, old_bn = last_sep.conv_pw, last_sep.bn_pw
        in_ch, out_ch = old_pw.in_channels, old_pw.out_channels
        self.last_conv = LastConv(in_ch, out_ch, fer_channels if fer is not None else 0, bn_eps=old_bn.eps)
        if fer is None:  # XceptionNet row: the last conv keeps the encoder's (ImageNet) weights
            self.last_conv.conv.load_state_dict(old_pw.state_dict())
            self.last_conv.bn.load_state_dict(old_bn.state_dict())
        # cut the encoder before its last conv: it now returns the feature entering that conv
        last_sep.conv_pw, last_sep.bn_pw, last_sep.act_pw = nn.Identity(), nn.Identity(), nn.Identity()
        self.encoder_channels = in_ch
        self.latent_channels = out_ch
        self._last_index = len(self.encoder.feature_info) - 1
        low_channels = self.encoder.feature_info[LOW_LEVEL_INDEX]["num_chs"]
        self.aspp = ASPP(out_ch, 256, aspp_rates, separable=separable)
        self.decoder = Decoder(low_channels, 256, 48, 256, num_outputs=1, separable=separable)
        self.fc = nn.Linear(out_ch, 2)
        self.fer = fer
        if fer is not None:
            for p in fer.parameters():
                p.requires_grad_(False)
            fer.eval()

    # -- training-loop contract ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "EMD":
        """Like ``nn.Module.train`` but the FER stream always stays in eval mode (frozen BN, Algorithm 1)."""
        super().train(mode)
        if self.fer is not None:
            self.fer.eval()
        return self

    def warmup_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters trained in the warm-up epochs (§IV-B): the rebuilt last conv, ASPP, decoder and FC."""
        for m in (self.last_conv, self.aspp, self.decoder, self.fc):
            yield from m.parameters()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Everything but the FER stream (§III-E: θ is updated, φ is not)."""
        fer_ids = {id(p) for p in self.fer.parameters()} if self.fer is not None else set()
        return (p for p in self.parameters() if id(p) not in fer_ids)

    def spec(self) -> dict:
        """The registry entry that rebuilds this network (:func:`emdlib.registry.model_from_checkpoint`):
        ``{"name": "emd", "kwargs": {"fer": FER spec or None, encoder, output_stride, aspp_rates, separable,
        fer_channels}}``.

        The FER stream is described by ``fer_spec`` (constructor) or its own ``spec()``; its weights travel in the
        same checkpoint (it is a submodule).
        """
        fer = None
        if self.fer is not None:
            fer = self._fer_spec or (self.fer.spec() if callable(getattr(self.fer, "spec", None)) else None)
            if fer is None:
                log.warning("EMD.spec: the FER stream %s has no spec; the checkpoint cannot rebuild it by name",
                            type(self.fer).__name__)
        return {"name": "emd", "kwargs": {"fer": fer, **self._arch}}

    # -- forward ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fer_features(self, fer_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Selected ESR branch map, branch index and class (Eqs. 3–5), computed without gradients."""
        return self.fer.select_branch(fer_image)

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        size = image.shape[-2:]
        low, feature = self.encoder.forward_intermediates(
            image, indices=[LOW_LEVEL_INDEX, self._last_index], intermediates_only=True)
        extras: dict[str, torch.Tensor] = {}
        fer_map = None
        if self.fer is not None:
            if fer_image is None:
                fer_image = esr_input(xception_to_rgb01(image.float()).clamp(0, 1))
            fer_map, branch, cls = self.fer_features(fer_image)
            extras["fer_branch"], extras["fer_class"] = branch, cls
        latent = self.last_conv(feature, fer_map)
        pooled = latent.mean(dim=(2, 3))
        mask = self.decoder(self.aspp(latent), low)
        extras["latent"] = pooled
        return DetectorOutput(logits=self.fc(pooled),
                              mask_logits=F.interpolate(mask, size=size, mode="bilinear", align_corners=False),
                              extras=extras)

    def encoder_grid(self, image_size: int) -> tuple[int, int]:
        """Spatial size of the encoder feature (where the FER map is resized to) for a square input."""
        with torch.no_grad():
            was = self.training
            self.eval()
            x = torch.zeros(1, 3, image_size, image_size, device=next(self.parameters()).device)
            feat = self.encoder.forward_intermediates(x, indices=[self._last_index], intermediates_only=True)[0]
            self.train(was)
        return tuple(feat.shape[-2:])
