"""MesoNet (Afchar et al., WIFS 2018): Meso-4 and MesoInception-4 (EMD Tables II–III; reference-facts §D.5,
code MESO:`classifiers.py`), and :func:`load_mesonet_h5` for the official Keras weights.

Architecture (Keras 'same' padding, BatchNorm **after** the ReLU, Keras BN eps 1e-3 / momentum 0.99):

* Meso-4: [conv 8@3×3, conv 8@5×5, conv 16@5×5, conv 16@5×5], each → ReLU → BN → MaxPool (2, 2, 2, 4)
  → 16×8×8 → Dropout 0.5 → Dense 16 → LeakyReLU 0.1 → Dropout 0.5 → Dense 1 (sigmoid). 27,977 parameters.
* MesoInception-4: Inception(1,4,4,2) → BN → pool 2; Inception(2,4,4,2) → BN → pool 2; then the last two conv
  blocks and the head of Meso-4. Inception(a,b,c,d) = concat[1×1 a; 1×1 b→3×3 b; 1×1 c→3×3 c dilation 2;
  1×1 d→3×3 d dilation 3], all ReLU. 28,615 parameters.

Label convention: the official sigmoid output is **P(real)** (the example trains on folders ``df`` = 0,
``real`` = 1). :func:`official_to_logits` is the one place that maps it to emdlib's ``logits`` (index 1 = fake);
the loss (:meth:`MesoNet.compute_loss`) is the original MSE on the sigmoid output.

Input: the shared ``(x - 0.5) / 0.5`` RGB → [0, 1] (the original ``rescale=1/255``) → ``input_size``² (default
256, the official size; bilinear with antialiasing when the preset size differs; the official example resizes with
Keras' nearest, which callers can reproduce by passing 256×256 images). The features shrink the input 32-fold, so a
preset whose faces are smaller than 256 px may run MesoNet at the faces' own size (as
:func:`emdlib.study.experiments.baseline_kwargs` does) with a first dense layer of ``16·(input_size/32)²`` inputs instead
of 1,024 — the same layers, fed a smaller image, as the paper-size network fed 64-px faces upsampled to 256 would see
no more information at 16× the compute. The official weights need the 256-px layout.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emdlib.baselines import inputs
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

INPUT_SIZE = 256
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 = weight of the old running value


def official_to_logits(z: torch.Tensor) -> torch.Tensor:
    """The official pre-sigmoid output ``z`` (σ(z) = P(real)) → emdlib logits ``(N, 2)``, index 1 = fake.

    ``softmax([z/2, -z/2])[1] = σ(-z) = 1 - P(real)``. The only place where MesoNet's label convention is mapped.
    """
    z = z.reshape(-1)
    return torch.stack([z, -z], dim=1) / 2


def _same_conv(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


class ConvBlock(nn.Module):
    """Conv ('same') → ReLU → BN → MaxPool(pool, 'same')."""

    def __init__(self, cin: int, cout: int, k: int, pool: int):
        super().__init__()
        self.conv = _same_conv(cin, cout, k)
        self.bn = _bn(cout)
        self.pool = nn.MaxPool2d(pool, ceil_mode=True)  # ceil = Keras 'same' pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(torch.relu(self.conv(x))))


class InceptionLayer(nn.Module):
    """MesoInception's Inception(a, b, c, d) → BN → MaxPool(pool)."""

    def __init__(self, cin: int, a: int, b: int, c: int, d: int, pool: int = 2):
        super().__init__()
        self.a1 = _same_conv(cin, a, 1)
        self.b1 = _same_conv(cin, b, 1)
        self.b3 = _same_conv(b, b, 3)
        self.c1 = _same_conv(cin, c, 1)
        self.c3 = _same_conv(c, c, 3, dilation=2)
        self.d1 = _same_conv(cin, d, 1)
        self.d3 = _same_conv(d, d, 3, dilation=3)
        self.bn = _bn(a + b + c + d)
        self.pool = nn.MaxPool2d(pool, ceil_mode=True)

    def keras_convs(self) -> list[nn.Conv2d]:
        """Convolutions in the order the official code creates them (= their Keras layer numbers)."""
        return [self.a1, self.b1, self.b3, self.c1, self.c3, self.d1, self.d3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu
        y = torch.cat([r(self.a1(x)), r(self.b3(r(self.b1(x)))), r(self.c3(r(self.c1(x)))),
                       r(self.d3(r(self.d1(x))))], 1)
        return self.pool(self.bn(y))


class MesoNet(DetectorNet):
    """Base of Meso-4 / MesoInception-4: ``features`` (→ 16×8×8 at 256 px) + the shared head (module docstring).

    Output: ``DetectorOutput(logits (N, 2) index 1 = fake, extras={"official_output": σ(z) = P(real)})``.
    ``head_activation``: LeakyReLU(0.1) between the dense layers, as the official code; the released Meso-4 files
    were saved from a graph without it and :func:`load_mesonet_h5` switches it off for them.
    ``bn_momentum`` (PyTorch convention): Keras' 0.99 is 0.01 here, a running average over ~100 steps. A run of a
    few hundred steps (the ``cpu`` preset: 140) evaluates with running statistics that are still largely their
    initial values, and MesoNet then scores at chance; such presets set a shorter average
    (``EMDConfig.baseline_bn_momentum``).
    """

    def __init__(self, features: nn.Module, head_activation: bool = True, input_size: int = INPUT_SIZE,
                 bn_momentum: float = KERAS_BN_MOMENTUM):
        super().__init__()
        if input_size % 32:
            raise ValueError(f"MesoNet input size must be a multiple of 32 (pooling 2·2·2·4), got {input_size}")
        self.input_size = input_size
        self.features = features
        self.dropout1 = nn.Dropout(0.5)
        self.dense1 = nn.Linear(16 * (input_size // 32) ** 2, 16)
        self.head_activation = head_activation
        self.dropout2 = nn.Dropout(0.5)
        self.dense2 = nn.Linear(16, 1)
        self.apply(_keras_init)
        for m in self.features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum

    def keras_layers(self) -> dict[str, list[nn.Module]]:
        """Weighted layers per Keras layer kind, in Keras creation order (used by :func:`load_mesonet_h5`)."""
        convs: list[nn.Module] = []
        bns: list[nn.Module] = []
        for block in self.features:
            convs += block.keras_convs() if isinstance(block, InceptionLayer) else [block.conv]
            bns.append(block.bn)
        return {"conv2d": convs, "batch_normalization": bns, "dense": [self.dense1, self.dense2]}

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        x = inputs.resize(inputs.to_rgb01(image), self.input_size)
        x = self.dense1(self.dropout1(torch.flatten(self.features(x), 1)))
        if self.head_activation:
            x = F.leaky_relu(x, 0.1)
        z = self.dense2(self.dropout2(x))
        return DetectorOutput(logits=official_to_logits(z), extras={"official_output": torch.sigmoid(z).reshape(-1)})

    def compute_loss(self, output: DetectorOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The original loss: MSE between the sigmoid output P(real) and the official target (1 = real)."""
        target_real = 1.0 - batch["label"].float()
        loss = F.mse_loss(output.extras["official_output"], target_real)
        return loss, {"loss_cls": loss.detach()}


def _keras_init(m: nn.Module) -> None:
    """Keras defaults: glorot-uniform kernels, zero biases."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


def Meso4(head_activation: bool = True, input_size: int = INPUT_SIZE, bn_momentum: float = KERAS_BN_MOMENTUM
          ) -> MesoNet:
    """Meso-4 (27,977 parameters at 256 px)."""
    features = nn.Sequential(ConvBlock(3, 8, 3, 2), ConvBlock(8, 8, 5, 2), ConvBlock(8, 16, 5, 2),
                             ConvBlock(16, 16, 5, 4))
    return MesoNet(features, head_activation, input_size, bn_momentum)


def MesoInception4(head_activation: bool = True, input_size: int = INPUT_SIZE,
                   bn_momentum: float = KERAS_BN_MOMENTUM) -> MesoNet:
    """MesoInception-4 (28,615 parameters at 256 px)."""
    features = nn.Sequential(InceptionLayer(3, 1, 4, 4, 2), InceptionLayer(11, 2, 4, 4, 2), ConvBlock(12, 16, 5, 2),
                             ConvBlock(16, 16, 5, 4))
    return MesoNet(features, head_activation, input_size, bn_momentum)


_LAYER = re.compile(r"^(conv2d|batch_normalization|dense|leaky_re_lu)_(\d+)$")


def load_mesonet_h5(model: MesoNet, path: str | os.PathLike) -> MesoNet:
    """Load an official MesoNet Keras ``.h5`` weights file (reference-facts §D.5) into ``model``; returns it.

    * Layers are matched per kind (conv2d, batch_normalization, dense) by their number sorted **numerically**
      (= Keras creation order; numbers need not start at 1, and ``conv2d_10`` sorts after ``conv2d_9``). The file's
      ``layer_names`` order must not be used: for MesoInception it lists each block's 1×1 convs of branches b, c, d
      before branch a's (a graph-traversal order), and the two 4→4 3×3 convs (b and dilated c) have equal shapes.
    * Conv kernels ``(kh, kw, in, out)`` → ``(out, in, kh, kw)``; dense kernels ``(in, out)`` → ``(out, in)``; the
      first dense layer's 1024 inputs are re-ordered from Keras' channels-last flatten ``(H, W, C)`` to ``(C, H, W)``.
    * BN gamma/beta/moving_mean/moving_variance → weight/bias/running_mean/running_var (eps 1e-3 in the model).
    * The head's LeakyReLU is switched on/off to match the file (the Meso-4 files have none).
    * Every tensor in the file is used exactly once and every model tensor is set (asserted).
    """
    import h5py
    import numpy as np

    if model.input_size != INPUT_SIZE:
        raise ValueError(f"{path}: the official MesoNet weights are for {INPUT_SIZE}-px input; "
                         f"the model was built for {model.input_size} px")

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MesoNet weights file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layers: dict[str, list[tuple[int, str]]] = {}
        for name in root.keys():
            m = _LAYER.match(name)
            if m:
                layers.setdefault(m.group(1), []).append((int(m.group(2)), name))
        for kind in layers:
            layers[kind].sort()
        tensors: dict[str, np.ndarray] = {}
        root.visititems(lambda n, o: tensors.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        used: set[str] = set()

        def take(layer: str, weight: str) -> np.ndarray:
            names = [n for n in tensors if n.startswith(layer + "/") and n.rsplit("/", 1)[-1] == f"{weight}:0"]
            if len(names) != 1:
                raise ValueError(f"{path}: layer {layer} has {len(names)} '{weight}' tensors, expected 1")
            if names[0] in used:
                raise ValueError(f"{path}: tensor {names[0]} used twice")
            used.add(names[0])
            return tensors[names[0]]

        def copy(dst: torch.Tensor, src: np.ndarray, what: str) -> None:
            t = torch.from_numpy(np.ascontiguousarray(src)).to(dst.dtype)
            if t.shape != dst.shape:
                raise ValueError(f"{path}: {what} has shape {tuple(t.shape)}, the model expects {tuple(dst.shape)}")
            dst.copy_(t)

        expected = model.keras_layers()
        for kind, modules in expected.items():
            found = layers.get(kind, [])
            if len(found) != len(modules):
                raise ValueError(f"{path}: {len(found)} {kind} layers in the file, the model has {len(modules)} "
                                 f"(wrong variant? Meso4 vs MesoInception4)")
        with torch.no_grad():
            for (_, name), conv in zip(layers["conv2d"], expected["conv2d"]):
                copy(conv.weight, take(name, "kernel").transpose(3, 2, 0, 1), f"{name}/kernel")
                copy(conv.bias, take(name, "bias"), f"{name}/bias")
            for (_, name), bn in zip(layers["batch_normalization"], expected["batch_normalization"]):
                copy(bn.weight, take(name, "gamma"), f"{name}/gamma")
                copy(bn.bias, take(name, "beta"), f"{name}/beta")
                copy(bn.running_mean, take(name, "moving_mean"), f"{name}/moving_mean")
                copy(bn.running_var, take(name, "moving_variance"), f"{name}/moving_variance")
                bn.num_batches_tracked.zero_()
            (_, d1), (_, d2) = layers["dense"]
            k1 = take(d1, "kernel")  # (1024, 16), rows in (H, W, C) order
            c = model.dense1.in_features // 64
            k1 = k1.reshape(8, 8, c, -1).transpose(3, 2, 0, 1).reshape(-1, 8 * 8 * c)  # (16, C·H·W)
            copy(model.dense1.weight, k1, f"{d1}/kernel")
            copy(model.dense1.bias, take(d1, "bias"), f"{d1}/bias")
            copy(model.dense2.weight, take(d2, "kernel").T, f"{d2}/kernel")
            copy(model.dense2.bias, take(d2, "bias"), f"{d2}/bias")
        unused = sorted(set(tensors) - used)
        if unused:
            raise ValueError(f"{path}: tensors not used by the model: {unused}")
        model.head_activation = bool(layers.get("leaky_re_lu"))
    n_model = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    n_file = sum(int(np.prod(v.shape)) for v in tensors.values())
    assert n_model == n_file, f"{path}: {n_file} values in the file, {n_model} in the model"
    log.info("loaded %s (%d tensors, head LeakyReLU %s)", path, len(used), model.head_activation)
    return model
