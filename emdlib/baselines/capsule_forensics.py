"""Capsule-Forensics v1 (Nguyen, Yamagishi & Echizen, ICASSP 2019; EMD Table III): the network, its loss, and
:func:`load_capsule_forensics` for the official checkpoints.

Our own code, written from the official implementation CF:``model.py`` and ``train.py`` (nii-yamagishilab/
Capsule-Forensics, commit b1fdda0; ``CapsuleNet``, ``RoutingLayer``, ``CapsuleLoss``), reproducing what that code
computes, its quirks included:

* ``features``: torchvision's VGG-19 ``features[0:19]`` (conv1_1 … conv3_4 and pool3) → 256 × S/8 × S/8.
  2,325,568 parameters. The original uses the ImageNet weights and keeps them fixed (its ``VggExtractor`` is not in
  the optimiser and the capsules read ``x.detach()``): so do we with ``pretrained``; without ImageNet weights the
  part starts from torchvision's random initialisation and trains with the capsules (deviation
  ``capsule-forensics-vgg``).
* ``capsules`` (:class:`CapsuleHead`, the part the official checkpoints hold; 471,321 parameters):
  three primary capsules (:class:`PrimaryCapsule`, 157,043 parameters each): Conv 3×3 256→64 → BN → ReLU →
  Conv 3×3 64→16 → BN → ReLU → statistics pooling (per channel mean and *unbiased* std over H·W → 2 × 16) →
  Conv1d 2→8 (k 5, stride 2, pad 2) → BN1d → Conv1d 8→1 (k 3, pad 1) → BN1d → an 8-D vector. The three vectors,
  stacked ``(N, 8, 3)``, are squashed along the **capsule** axis (the official ``squash(output, dim=-1)``: each of
  the 8 dimensions is normalised across the 3 capsules, not each capsule's vector).
* :class:`DynamicRouting` (192 parameters) to 2 output capsules of 4 dims, 2 iterations: predictions
  ``û_{j|i} = W_ij u_i`` with ``W`` ``(2, 3, 4, 8)``; routing logits ``b`` ``(N, 2, 3, 4)`` — one per output
  *dimension*, zero at the start; coupling ``c = softmax(b)`` over the **input** capsules; ``v_j = squash(Σ_i c_ij
  û_{j|i})`` over the 4 dims; between iterations ``b += û ⊙ v`` (element-wise, no sum over the dims). In training
  mode N(0, 0.01²) noise is added to ``W`` at every forward pass (the official ``random=True`` of ``train.py``);
  evaluation uses ``W`` as it is (``random=False`` in its validation and ``test.py``).
* Output capsules ``v`` ``(N, 2, 4)`` (capsule, dim). Official class probabilities per dim: softmax over the two
  capsules; the score is their mean over the 4 dims (``class_``). Capsule 0 = fake, 1 = real: ``train.py`` reads
  ``dataset/<split>`` with ImageFolder, whose folders ``fake``/``real`` sort to 0/1.

Parameters in all: 2,796,889 (the VGG-19 part counted), which is the figure the v1 paper reports as recalled
(not re-read here).

Label convention: :func:`official_to_logits` is the one place that maps the official scores to emdlib's logits
(index 1 = fake), :func:`official_labels` our labels to the official ones for the loss. The loss
(:func:`capsule_loss`) is the official ``CapsuleLoss``: the sum over the 4 output dims of PyTorch's cross-entropy
applied to the already-softmaxed class probabilities (a double softmax, kept as the original trains).

Input: the shared ``(x - 0.5) / 0.5`` RGB → [0, 1] → ``input_size``² (default 128, the official ``--imageSize``:
``Resize`` + ``CenterCrop`` of square face crops = a bilinear resize) → ImageNet mean/std (the official
``Normalize``), all in :meth:`CapsuleForensics.normalise`. Statistics pooling makes the capsules independent of the
input size; VGG's three poolings need an input of at least 16 px (a 2 × 2 pool3 map, for the std).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emdlib.baselines import inputs
from emdlib.checkpoint import load_torch_state_dict
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

INPUT_SIZE = 128  # CF:train.py --imageSize
MIN_INPUT_SIZE = 16  # three 2×2 poolings → a 2×2 map, the smallest with a std
VGG_LAYERS = 19  # torchvision vgg19.features[0:19]: conv1_1 … conv3_4 + pool3 (CF:model.py VggExtractor(0, 18))
FEATURE_CHANNELS = 256
NUM_PRIMARY = 3
PRIMARY_DIM = 8
NUM_CLASSES = 2  # output capsules; official index 0 = fake, 1 = real
OUTPUT_DIM = 4
ROUTING_ITERATIONS = 2
ROUTING_NOISE_STD = 0.01  # CF:model.py RoutingLayer.forward(random=True)
#: What a weights file or folder is searched for (:func:`emdlib.pretrained.weights_file`).
VGG_NAME = "vgg19"


def squash(s: torch.Tensor, dim: int) -> torch.Tensor:
    """Capsule non-linearity ``v = ‖s‖² / (1 + ‖s‖²) · s / ‖s‖`` along ``dim`` (Sabour et al. 2017, Eq. 1; CF:model.py
    ``squash``, written as there). Same shape as ``s``; the norm along ``dim`` becomes ``‖s‖² / (1 + ‖s‖²)`` in
    [0, 1). A zero vector gives NaN, as in the original."""
    squared_norm = (s**2).sum(dim=dim, keepdim=True)
    return squared_norm / (1 + squared_norm) * s / torch.sqrt(squared_norm)


def statistics_pooling(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, 2, C)``: per channel mean and unbiased std over the H·W positions (CF:model.py
    ``StatsNet``). Raises ValueError for a single position (no std)."""
    if x.shape[-2] * x.shape[-1] < 2:
        raise ValueError(f"statistics pooling needs at least 2 positions, got a {tuple(x.shape[-2:])} map")
    flat = x.flatten(2)
    return torch.stack((flat.mean(2), flat.std(2)), dim=1)


def vgg19_to_pool3() -> nn.Sequential:
    """torchvision's VGG-19 ``features[0:19]`` (the same layers and state-dict keys, ``"0.weight"`` … ``"16.bias"``;
    built from torchvision's ``make_layers`` with configuration "E" up to pool3, without the 120 M-parameter
    classifier), initialised as torchvision's ``VGG`` does (conv weights Kaiming-normal fan-out, biases 0).
    ``(N, 3, S, S)`` → ``(N, 256, ⌊S/8⌋, ⌊S/8⌋)``."""
    from torchvision.models.vgg import cfgs, make_layers

    cfg = cfgs["E"][: cfgs["E"].index("M", 6) + 1]  # 64, 64, M, 128, 128, M, 256 ×4, M
    features = make_layers(cfg)
    assert len(features) == VGG_LAYERS, len(features)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def _official_init(m: nn.Module) -> None:
    """CF:model.py ``CapsuleNet.weights_init``: conv (2-D and 1-D) weights N(0, 0.02), biases left at PyTorch's
    default; BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class PrimaryCapsule(nn.Module):
    """One primary capsule (CF:model.py ``FeatureExtractor.ext_k``): ``(N, 256, h, w)`` → ``(N, 8)`` (module
    docstring). ``h·w ≥ 2``."""

    def __init__(self, in_channels: int = FEATURE_CHANNELS):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.stats_conv1 = nn.Conv1d(2, 8, 5, stride=2, padding=2)
        self.stats_bn1 = nn.BatchNorm1d(8)
        self.stats_conv2 = nn.Conv1d(8, 1, 3, padding=1)
        self.stats_bn2 = nn.BatchNorm1d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.stats_bn1(self.stats_conv1(statistics_pooling(x)))  # (N, 8, 8); no activation, as the original
        return self.stats_bn2(self.stats_conv2(x)).flatten(1)  # (N, 8)


class DynamicRouting(nn.Module):
    """Routing by agreement from ``NUM_PRIMARY`` capsules of ``PRIMARY_DIM`` dims to ``NUM_CLASSES`` of
    ``OUTPUT_DIM`` (CF:model.py ``RoutingLayer``, module docstring): ``u (N, 3, 8)`` → ``v (N, 2, 4)``.

    ``route_weights`` ``(2, 3, 4, 8)`` start N(0, 1) (``torch.randn``, as the original). ``noise_std``: the
    training-mode perturbation of the weights (0 switches it off).
    """

    def __init__(self, iterations: int = ROUTING_ITERATIONS, noise_std: float = ROUTING_NOISE_STD):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"routing needs at least one iteration, got {iterations}")
        self.iterations = iterations
        self.noise_std = noise_std
        self.route_weights = nn.Parameter(torch.randn(NUM_CLASSES, NUM_PRIMARY, OUTPUT_DIM, PRIMARY_DIM))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        w = self.route_weights
        if self.training and self.noise_std > 0:
            w = w + self.noise_std * torch.randn_like(w)
        priors = torch.einsum("jiok,nik->njio", w, u)  # û (N, out caps, in caps, out dim)
        logits = torch.zeros_like(priors)
        for i in range(self.iterations):
            probs = torch.softmax(logits, dim=2)  # over the input capsules
            v = squash((probs * priors).sum(dim=2, keepdim=True), dim=3)  # (N, 2, 1, 4)
            if i < self.iterations - 1:
                logits = logits + priors * v
        return v.squeeze(2)


class CapsuleHead(nn.Module):
    """Everything after VGG (the official ``CapsuleNet``): pool3 features ``(N, 256, h, w)``, ``h·w ≥ 2`` →
    output capsules ``(N, 2, 4)`` (capsule 0 = fake, 1 = real; official layout is ``(N, 4, 2)``)."""

    def __init__(self, in_channels: int = FEATURE_CHANNELS):
        super().__init__()
        self.primary = nn.ModuleList(PrimaryCapsule(in_channels) for _ in range(NUM_PRIMARY))
        self.primary.apply(_official_init)
        self.routing = DynamicRouting()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        u = squash(torch.stack([cap(features) for cap in self.primary], dim=-1), dim=-1)  # (N, 8, 3), capsule axis
        return self.routing(u.transpose(1, 2))


def official_scores(capsules: torch.Tensor) -> torch.Tensor:
    """Output capsules ``(N, 2, 4)`` → the official class scores ``(N, 2)`` (``class_``: the mean over the 4 dims
    of the per-dim softmax over the capsules; index 0 = fake, 1 = real; each row sums to 1)."""
    return torch.softmax(capsules, dim=1).mean(2)


def official_to_logits(scores: torch.Tensor) -> torch.Tensor:
    """Official scores ``(N, 2)`` (index 0 = fake, 1 = real, rows summing to 1) → emdlib logits ``(N, 2)``, index
    1 = fake, with ``softmax(logits) = scores[:, [1, 0]]``. The one place where the label convention is mapped.

    The scores are bounded away from 0 (the capsules' norms are below 1, so each per-dim softmax lies in
    [1/(1+e²), e²/(1+e²)]), so the log is finite."""
    return torch.log(scores.flip(1))


def official_labels(label: torch.Tensor) -> torch.Tensor:
    """emdlib labels (1 = fake) → official labels (0 = fake, 1 = real)."""
    return 1 - label.long()


def capsule_loss(capsules: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """CF:model.py ``CapsuleLoss``: ``Σ_d CE(softmax_j(v[:, j, d]), y)`` over the 4 output dims, with PyTorch's
    cross-entropy (which applies its own log-softmax) taking the already-softmaxed probabilities, each term the mean
    over the batch. ``capsules`` ``(N, 2, 4)``; ``label`` ``(N,)`` in emdlib's convention (1 = fake).

    A scalar; 4·ln 2 ≈ 2.773 at chance. It cannot approach 0 (the original's double softmax): the output capsules
    have norms below 1, so the class differences over the 4 dims have a Euclidean norm below 2, and the loss's
    infimum is ``4·log(1 + e^(−tanh ½))`` ≈ 1.954 (two opposite capsules of norm → 1 with equal components, each
    dim's probability → σ(1))."""
    probs = torch.softmax(capsules, dim=1)
    y = official_labels(label)
    return sum(F.cross_entropy(probs[:, :, d], y) for d in range(probs.shape[2]))


class CapsuleForensics(DetectorNet):
    """Capsule-Forensics v1 (module docstring): VGG-19 to pool3, then :class:`CapsuleHead`.

    ``pretrained``: the VGG part's ImageNet weights — True (torchvision's ``IMAGENET1K_V1``; the network or
    torch's cache), a local file or folder (:func:`vgg_features_state`), or False (torchvision's random
    initialisation). With ImageNet weights the VGG part is frozen as in the original; without, it trains.
    ``input_size``: the side the shared input is resized to (≥ 16; default 128).

    Output: ``DetectorOutput(logits (N, 2) index 1 = fake, mask_logits None, extras={"capsules": (N, 2, 4),
    "official_scores": (N, 2) index 0 = fake})``.
    """

    def __init__(self, pretrained: bool | str | os.PathLike = False, input_size: int = INPUT_SIZE):
        super().__init__()
        if input_size < MIN_INPUT_SIZE:
            raise ValueError(f"Capsule-Forensics input size must be at least {MIN_INPUT_SIZE} px (VGG's pool3 map "
                             f"needs 2×2 positions for the statistics pooling), got {input_size}")
        self.input_size = input_size
        self.features = vgg19_to_pool3()
        self.features_frozen = pretrained is not False and pretrained is not None
        if self.features_frozen:
            self.features.load_state_dict(vgg_features_state(pretrained), strict=True)
            self.features.requires_grad_(False)
        self.capsules = CapsuleHead()
        self.register_buffer("mean", torch.tensor(inputs.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(inputs.IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """Shared input ``(N, 3, S, S)`` in [-1, 1] → the official input: ``input_size``² RGB, ImageNet mean/std."""
        return (inputs.resize(inputs.to_rgb01(image), self.input_size) - self.mean) / self.std

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        x = self.normalise(image)
        if self.features_frozen:
            with torch.no_grad():
                x = self.features(x)
        else:
            x = self.features(x)
        capsules = self.capsules(x)
        scores = official_scores(capsules)
        return DetectorOutput(logits=official_to_logits(scores),
                              extras={"capsules": capsules, "official_scores": scores})

    def compute_loss(self, output: DetectorOutput, batch: Mapping[str, Any]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The official loss (:func:`capsule_loss`) on ``output.extras["capsules"]`` and ``batch["label"]``."""
        loss = capsule_loss(output.extras["capsules"], batch["label"])
        return loss, {"loss_cls": loss.detach()}

    def train(self, mode: bool = True) -> "CapsuleForensics":
        """As nn.Module; frozen ImageNet features stay in eval mode (the original's ``vgg_ext.eval()``)."""
        super().train(mode)
        if self.features_frozen:
            self.features.eval()
        return self


# ------------------------------------------------------------------------------------------------ weights files

_OFFICIAL_KEY = re.compile(r"^fea_ext\.ext_([123])\.(\d+)\.(weight|bias|running_mean|running_var)$")
#: Index in the official ``nn.Sequential`` of a primary capsule → our layer name.
OFFICIAL_LAYERS = {0: "conv1", 1: "bn1", 3: "conv2", 4: "bn2", 7: "stats_conv1", 8: "stats_bn1",
                   9: "stats_conv2", 10: "stats_bn2"}


def official_to_ours(state: Mapping[str, torch.Tensor], source: str | os.PathLike = "state dict"
                     ) -> dict[str, torch.Tensor]:
    """Rename an official ``CapsuleNet`` state dict to :class:`CapsuleHead`'s names:
    ``fea_ext.ext_k.<i>.<p>`` → ``primary.<k-1>.<OFFICIAL_LAYERS[i]>.<p>``, ``routing_stats.route_weights`` →
    ``routing.route_weights``; ``num_batches_tracked`` entries (absent from the PyTorch 0.3 files) are dropped.
    Raises ValueError naming ``source`` and the key for any other entry."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key == "routing_stats.route_weights":
            out["routing.route_weights"] = value
            continue
        m = _OFFICIAL_KEY.match(key)
        if m is None or int(m.group(2)) not in OFFICIAL_LAYERS:
            raise ValueError(f"{source}: {key!r} is not a Capsule-Forensics v1 (CapsuleNet) tensor")
        out[f"primary.{int(m.group(1)) - 1}.{OFFICIAL_LAYERS[int(m.group(2))]}.{m.group(3)}"] = value
    return out


def load_capsule_forensics(model: CapsuleForensics, path: str | os.PathLike) -> CapsuleForensics:
    """Load an official checkpoint (``capsule_<epoch>.pt``: the ``CapsuleNet`` state dict, read with
    ``torch.load(weights_only=True)``) into ``model.capsules``; returns ``model``.

    Strict: every tensor of the file is used and every tensor of the capsule head is set (BatchNorm's
    ``num_batches_tracked`` restart at 0), shapes equal; the VGG part is not in the file (the original takes
    torchvision's ImageNet VGG-19: build ``model`` with ``pretrained``). FileNotFoundError for a missing file,
    ValueError naming the file otherwise.
    """
    state = official_to_ours(load_torch_state_dict(path), path)
    head = model.capsules.state_dict()
    expected = {k for k in head if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: not a Capsule-Forensics v1 checkpoint (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    bad = [k for k in state if tuple(state[k].shape) != tuple(head[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{path}: {k} has shape {tuple(state[k].shape)} in the file, the model expects "
                         f"{tuple(head[k].shape)}")
    state.update({k: torch.zeros_like(v) for k, v in head.items() if k.endswith("num_batches_tracked")})
    model.capsules.load_state_dict(state, strict=True)
    log.info("loaded %s (%d tensors) into the capsule head", path, len(expected))
    return model


def vgg_features_state(weights: bool | str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ImageNet weights of VGG-19's ``features[0:19]`` as a state dict of that ``nn.Sequential``
    (``"0.weight"`` … ``"16.bias"``).

    ``weights``: True → torchvision's ``VGG19_Weights.IMAGENET1K_V1`` (downloaded once into torch's cache); a file,
    or a folder holding ``vgg19.safetensors`` (or ``.pth``, … :func:`emdlib.pretrained.weights_file`), with a
    torchvision or timm VGG-19 state dict (``features.<i>.weight``; the classifier is ignored), read without
    unpickling code (:func:`emdlib.pretrained.read_weights_file`). Raises FileNotFoundError, ValueError naming the
    file when it lacks a tensor of the part or has one of the wrong shape, RuntimeError when the download fails.
    """
    if weights is True:
        from torchvision.models import VGG19_Weights, vgg19

        try:
            full = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
        except Exception as e:  # urllib raises its own (OSError-derived) types offline
            raise RuntimeError(f"torchvision's ImageNet VGG-19 weights could not be downloaded ({type(e).__name__}: "
                               f"{e}). Give a local file instead (study parameter imagenet_weights: a file, or a "
                               f"folder holding {VGG_NAME}.safetensors or {VGG_NAME}.pth), or start from random "
                               "weights (pretrained=False).") from e
        return full.features[:VGG_LAYERS].state_dict()
    from emdlib.pretrained import read_weights_file, weights_file

    path = weights_file(weights, VGG_NAME)
    state = read_weights_file(path)
    want = vgg19_to_pool3().state_dict()
    out: dict[str, torch.Tensor] = {}
    for k, v in want.items():
        src = state.get(f"features.{k}")
        if src is None:
            raise ValueError(f"{path}: no tensor features.{k}: not VGG-19 ImageNet weights (torchvision or timm "
                             f"layout)")
        if tuple(src.shape) != tuple(v.shape):
            raise ValueError(f"{path}: features.{k} has shape {tuple(src.shape)}, VGG-19 has {tuple(v.shape)}")
        out[k] = src.to(v.dtype)
    log.info("%s: ImageNet VGG-19 weights (features up to pool3) loaded", path)
    return out


def describe_vgg_weights(weights: bool | str | os.PathLike | None) -> dict[str, Any]:
    """What the VGG part started from, for run records: ``{"source": "random"}``, ``{"source": "torchvision",
    "model": "vgg19", "weights": "IMAGENET1K_V1"}`` or the weights file with its sha256
    (:func:`emdlib.pretrained.describe_weights`)."""
    if weights is True:
        return {"source": "torchvision", "model": VGG_NAME, "weights": "IMAGENET1K_V1"}
    from emdlib.pretrained import describe_weights

    return describe_weights(weights, VGG_NAME)
