"""Face X-ray (Li, Bao, Zhang, Yang, Chen, Wen & Guo, "Face X-ray for More General Face Forgery Detection", CVPR
2020; EMD Table III): the network, its loss, and its training set of blended real faces.

No official code was released; this is our own, from the paper's description (§3.3, §4 "Implementation detail",
as recalled — the paper's text could not be re-read here; values it gives are marked so in the recipe):

* Backbone: HRNet (Sun et al., "High-Resolution Representations for Labeling Pixels and Regions", 2019) — timm's
  ``hrnet_w48`` for the paper (ImageNet weights where the preset has them, :func:`emdlib.pretrained.create_timm_model`),
  its four branch outputs (``features_only``, ``feature_location=""``: 48, 96, 192, 384 channels at strides 4, 8, 16,
  32). CPU presets take ``hrnet_w18_small`` (16, 32, 64, 128 channels; deviation ``face-xray-backbone``).
* X-ray head (:class:`XrayHead`): the four branch maps bilinearly upsampled to the stride-4 grid and concatenated
  (HRNetV2's representation: 720 channels for W48), a 1 × 1 convolution to one channel, bilinear upsampling to the
  input size: the X-ray's logits ``(N, 1, S, S)`` (``sigmoid`` → the predicted X-ray ``B̂`` in [0, 1]).
* Classification head (:class:`XrayClassifier`): from the predicted X-ray, global average pooling and a fully
  connected layer to 2 logits (index 1 = fake).
* Loss (:func:`xray_loss`): ``L = L_cls + λ · L_b`` with ``L_cls`` the softmax cross-entropy of the two logits and
  ``L_b`` the binary cross-entropy of ``B̂`` against the X-ray target ``B = 4M(1 − M)``, averaged over the pixels;
  ``λ = 100`` (:data:`LAMBDA`).
* Training data: only real faces, half of them turned into blended fakes on the fly (:mod:`emdlib.data.blending`)
  through :meth:`FaceXray.training_data`; validation and test read the cell's real and manipulated faces as every
  system. Their ``mask`` is the binary manipulation mask, which the X-ray term of the validation loss compares with
  (the validation loss only breaks ties of validation accuracy; deviation ``face-xray-validation-mask``).

Input: the shared ``(x − 0.5) / 0.5`` RGB → [0, 1] → ``input_size``² (the paper's 256, capped at the preset's face
size by the study) → ImageNet mean/std, all in :meth:`FaceXray.normalise`; the X-ray logits come back at the shared
input's size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from emdlib.baselines import inputs
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

#: The paper's backbone (timm name) and the smaller HRNet of the CPU presets (deviation ``face-xray-backbone``).
BACKBONE = "hrnet_w48"
SMALL_BACKBONE = "hrnet_w18_small"
INPUT_SIZE = 256  # the paper's face size
#: The X-ray term's weight in ``L = L_cls + λ L_b`` (paper §3.3, as recalled).
LAMBDA = 100.0
#: timm's HRNet ``features_only`` outputs: 0 is the stem (stride 2), 1–4 the four branches (strides 4–32).
BRANCHES = (1, 2, 3, 4)
MIN_INPUT_SIZE = 32  # stride 32: the lowest branch has one position


class XrayHead(nn.Module):
    """HRNetV2 representation → X-ray logits: the branch maps ``[(N, C_i, H_i, W_i)]`` bilinearly upsampled to the
    first's grid, concatenated (``Σ C_i`` channels), a 1 × 1 conv to one channel, bilinear upsampling to ``size``².
    Returns ``(N, 1, size, size)`` logits."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, features: list[torch.Tensor], size: int) -> torch.Tensor:
        grid = features[0].shape[-2:]
        x = torch.cat([features[0]] + [F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                                       for f in features[1:]], dim=1)
        return F.interpolate(self.conv(x), size=(size, size), mode="bilinear", align_corners=False)


class XrayClassifier(nn.Module):
    """Predicted X-ray ``B̂`` ``(N, 1, H, W)`` in [0, 1] → 2 logits (index 1 = fake): global average pooling, then a
    fully connected layer 1 → 2."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, xray: torch.Tensor) -> torch.Tensor:
        return self.fc(xray.mean(dim=(2, 3)))


def xray_loss(output: DetectorOutput, batch: Mapping[str, Any], lam: float = LAMBDA
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Face X-ray's loss ``L = L_cls + λ · L_b`` (module docstring): ``L_cls`` cross-entropy of ``output.logits``
    ``(N, 2)`` against ``batch["label"]`` ``(N,)``; ``L_b`` binary cross-entropy of ``sigmoid(output.mask_logits)``
    ``(N, 1, S, S)`` against ``batch["mask"]`` (the X-ray target in [0, 1], same shape), mean over pixels and
    images, computed from the logits. Returns the loss and its detached parts ``loss``, ``loss_cls``, ``loss_xray``
    (unweighted). Raises ValueError when the target and the logits differ in shape."""
    loss_cls = F.cross_entropy(output.logits.float(), batch["label"].long())
    target = batch["mask"]
    if target.shape != output.mask_logits.shape:
        raise ValueError(f"X-ray target shape {tuple(target.shape)} does not match the X-ray logits "
                         f"{tuple(output.mask_logits.shape)}")
    loss_xray = F.binary_cross_entropy_with_logits(output.mask_logits.float(), target.float())
    loss = loss_cls + lam * loss_xray
    return loss, {"loss": loss.detach(), "loss_cls": loss_cls.detach(), "loss_xray": loss_xray.detach()}


class FaceXray(DetectorNet):
    """Face X-ray (module docstring).

    ``backbone``: a timm HRNet name (:data:`BACKBONE` for the paper, :data:`SMALL_BACKBONE` for CPU presets);
    ``pretrained``: its ImageNet weights (False, True for timm's, or a local file or folder,
    :func:`emdlib.pretrained.create_timm_model`); ``input_size``: the side the shared input is resized to (≥ 32;
    default 256); ``lam``: the X-ray term's weight.

    Output: ``DetectorOutput(logits (N, 2) index 1 = fake, mask_logits (N, 1, S, S) the X-ray's logits at the shared
    input's size S, extras={"xray": (N, 1, S, S) the predicted X-ray in [0, 1]})``.
    Raises ValueError for an input size below 32.
    """

    def __init__(self, backbone: str = BACKBONE, pretrained: bool | str | os.PathLike = False,
                 input_size: int = INPUT_SIZE, lam: float = LAMBDA):
        super().__init__()
        from emdlib.pretrained import create_timm_model

        if input_size < MIN_INPUT_SIZE:
            raise ValueError(f"Face X-ray input size must be at least {MIN_INPUT_SIZE} px (HRNet's stride-32 branch), "
                             f"got {input_size}")
        self.backbone_name, self.input_size, self.lam = backbone, int(input_size), float(lam)
        self.backbone = create_timm_model(backbone, pretrained, features_only=True, feature_location="",
                                          out_indices=BRANCHES)
        self.head = XrayHead(sum(self.backbone.feature_info.channels()))
        self.classifier = XrayClassifier()
        self.register_buffer("mean", torch.tensor(inputs.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(inputs.IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """Shared input ``(N, 3, S, S)`` in [-1, 1] → ``input_size``² RGB with ImageNet mean/std (timm's HRNet)."""
        return (inputs.resize(inputs.to_rgb01(image), self.input_size) - self.mean) / self.std

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        features = self.backbone(self.normalise(image))
        xray_logits = self.head(features, self.input_size)
        xray = torch.sigmoid(xray_logits)
        logits = self.classifier(xray)
        size = image.shape[-1]
        if size != self.input_size:
            xray_logits = F.interpolate(xray_logits, size=(size, size), mode="bilinear", align_corners=False)
            xray = torch.sigmoid(xray_logits)
        return DetectorOutput(logits=logits, mask_logits=xray_logits, extras={"xray": xray})

    def compute_loss(self, output: DetectorOutput, batch: Mapping[str, Any]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:func:`xray_loss` with this network's λ."""
        return xray_loss(output, batch, self.lam)

    def training_data(self, dataset: Dataset, seed: int) -> Dataset:
        """The cell's real training faces, half of them blended fakes
        (:class:`emdlib.data.blending.BlendedFaces`); the cell's fakes are not used (the paper trains on real
        faces only). The landmark pass runs in as many DataLoader workers as training would load batches with
        (:func:`emdlib.train.loader_workers`: none on the CPU, up to 8 beside a GPU)."""
        from emdlib.data.blending import BlendedFaces
        from emdlib.train import loader_workers, resolve_device

        return BlendedFaces(dataset, seed=seed, workers=loader_workers(resolve_device()))


def backbone_for(image_size: int) -> str:
    """The HRNet a preset's faces get: the paper's :data:`BACKBONE` when they are at least the paper's
    :data:`INPUT_SIZE` (``faces``, ``paper``), else :data:`SMALL_BACKBONE` (``tiny``, ``cpu``: 64-px faces on one
    CPU thread; deviation ``face-xray-backbone``)."""
    return BACKBONE if image_size >= INPUT_SIZE else SMALL_BACKBONE
