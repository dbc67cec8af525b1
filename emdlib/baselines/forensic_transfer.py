"""FT-res: ForensicTransfer (Cozzolino, Thies, Rössler, Riess, Nießner & Verdoliva, arXiv:1812.02510; EMD Table III)
on high-pass residuals — the network, its activation and reconstruction losses, and its residual input.

ForensicTransfer is an autoencoder whose latent is split into a "real" and a "fake" half: training pulls the true
class's half to activation 1 and the other's to 0 while the decoder reconstructs the input from the true half alone;
an image is called fake when the fake half is the more active. No official code was released. What the paper's
abstract and project page state is taken as confirmed; the paper's body (§3 layer sizes, §4 training) could not be
re-read here, so every layer size and training value below is *inferred* (recipe ``forensic_transfer``; deviation
``ft-res-architecture``), each from the sources named:

* :class:`Encoder`: 5 × (Conv 3×3, padding 1 → BatchNorm → ReLU), channels 8, 16, 32, 64, 128, strides
  1, 2, 2, 2, 2 → a latent of 128 × S/16 × S/16 (16 × 16 for the 256-px input). 99,096 parameters with the
  6-channel residual input. Sources: the recalled paper (five 3×3 convolutions, BN, ReLU, a 128-channel latent),
  a public reimplementation (nivba/Mamo-ForensicTransfer ``procedures/ModelLayer1.py``: these channels and strides)
  and ClassNSeg, Nguyen et al.'s ForensicTransfer-derived network (:mod:`.classnseg`: the same 128 × 16 × 16 latent).
* Latent halves (:func:`activations`): channels 0–63 = ``h_0`` (real, label 0), 64–127 = ``h_1`` (fake, label 1);
  ``a_c = ‖h_c‖₁ / K_c`` with ``K_c`` the number of elements of the half (the mean absolute value).
* :class:`Decoder`, the mirror image: 4 × (nearest-neighbour ×2 upsampling → Conv 3×3 → BatchNorm → ReLU),
  channels 64, 32, 16, 8, then Conv 3×3 → the input's channels (no activation for the residual, ``tanh`` for the
  RGB input of plain ForensicTransfer, whose input lies in [-1, 1]). 98,718 parameters (residual input); 197,814
  in all (197,379 on RGB). The paper gives no parameter count as far as it could be read here.
  It decodes the latent with the *other* class's half set to zero (:func:`select_half`): the true class for the
  loss (:meth:`ForensicTransfer.compute_loss`), the predicted class otherwise.
* Loss (:func:`forensic_transfer_loss`): ``L = γ·L_act + L_rec``, γ = 1 (:data:`GAMMA`), with
  ``L_act = mean_i(|a_{i,1} − y_i| + |a_{i,0} − (1 − y_i)|)`` and ``L_rec`` = the mean absolute difference between
  the input and its reconstruction from the true half.
* Decision: the class of the larger activation. emdlib's logits (:func:`activations_to_logits`, the one place this
  is mapped) are the two activations as they are, ``[a_0, a_1]``: ForensicTransfer's class order is emdlib's
  (index 1 = fake), ``argmax`` is the paper's decision, and ``P(fake) = softmax(logits)[1] = σ(a_1 − a_0)`` orders
  the images as the paper's activation difference, so AUC is the paper's score's. As for MultiTask (same
  activation-based decision), no temperature is applied: P(fake) lies in σ([−1, 1]) ≈ [0.27, 0.73] once trained.

Input (:func:`residual`, in :meth:`ForensicTransfer.prepare`, the one place it is converted): the shared
``(x − 0.5)/0.5`` RGB → [0, 1] → ``input_size``² (bilinear with antialiasing; default 256, the recalled patch size) →
0–255 → the third-order residual ``[1, −3, 3, −1]`` (:data:`emdlib.baselines.steganalysis.RESIDUAL_KERNEL`, the
high-pass filter of Cozzolino, Poggi & Verdoliva 2017 and of Fridrich & Kodovsky's SRM) of each colour channel,
horizontally and vertically → 6 channels (R_h, G_h, B_h, R_v, G_v, B_v), divided by ``q·3`` = 3 grey levels (the
residual's quantisation step in those works, :data:`emdlib.baselines.steganalysis.RESIDUAL_FACTOR`). The image is
reflect-padded (1 before, 2 after along the filter's axis) so the residual keeps the image's size. *Inferred:*
which high-pass filter FT-res uses could not be re-read; this one is the first author's own residual (Cozzolino et
al. 2017, also Table II's "Cozzolino et al." row) and the one the Nießner lab's later ForensicTransfer comparison
feeds its residual variant (Aneja & Nießner 2020, shivangi-aneja/DDT ``common/utils/dataset.py``
``FaceResidualDataset``: rows and columns of the three colour channels). ``residual=False`` gives plain
ForensicTransfer on the shared RGB input.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emdlib.baselines import inputs
from emdlib.baselines.steganalysis import RESIDUAL_FACTOR, RESIDUAL_KERNEL
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

INPUT_SIZE = 256  # recalled: ForensicTransfer trains on 256 × 256 patches
#: Encoder layers: (output channels, stride); 3×3 convolutions, padding 1, each followed by BatchNorm and ReLU.
ENCODER_SPEC = ((8, 1), (16, 2), (32, 2), (64, 2), (128, 2))
#: Decoder layers after the latent: (output channels) of the nearest ×2 upsampling → conv → BN → ReLU blocks.
DECODER_SPEC = (64, 32, 16, 8)
LATENT_CHANNELS = ENCODER_SPEC[-1][0]
HALVES = 2  # half c holds class c: 0 = real, 1 = fake (emdlib's label order)
DOWNSAMPLING = 2 ** sum(1 for _, s in ENCODER_SPEC if s == 2)  # 16
GAMMA = 1.0  # weight of L_act in L = γ·L_act + L_rec
#: Residual channels per colour channel: horizontal and vertical.
RESIDUAL_DIRECTIONS = ("h", "v")


# ----------------------------------------------------------------------------------------------------- input

def residual(rgb255: torch.Tensor) -> torch.Tensor:
    """Third-order residuals of images on the 0–255 scale, in units of the quantisation step ``q·3`` (q = 1).

    ``(N, C, H, W)`` → ``(N, 2C, H, W)``: channels ``[c_h for c] + [c_v for c]`` with
    ``r_h[i, j] = (x[i, j−1] − 3x[i, j] + 3x[i, j+1] − x[i, j+2]) / 3`` (the kernel :data:`RESIDUAL_KERNEL`
    correlated along rows, anchored as in :func:`emdlib.baselines.steganalysis.residuals` one sample earlier), and
    ``r_v`` the same along columns; the image is reflect-padded by 1 before and 2 after, so the borders see their
    mirror image. Away from the borders any quadratic ramp gives 0 (a third-order difference). Needs H, W ≥ 3
    (reflection); raises ValueError otherwise. Source: module docstring (Cozzolino et al. 2017; inferred for FT-res)."""
    if rgb255.dim() != 4:
        raise ValueError(f"residual expects (N, C, H, W) images, got shape {tuple(rgb255.shape)}")
    h, w = rgb255.shape[-2:]
    if h < 3 or w < 3:
        raise ValueError(f"residual needs images of at least 3×3 pixels (reflect padding), got {h}×{w}")
    c = rgb255.shape[1]
    k = rgb255.new_tensor(RESIDUAL_KERNEL) / RESIDUAL_FACTOR
    r_h = F.conv2d(F.pad(rgb255, (1, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 4).expand(c, 1, 1, 4), groups=c)
    r_v = F.conv2d(F.pad(rgb255, (0, 0, 1, 2), mode="reflect"), k.view(1, 1, 4, 1).expand(c, 1, 4, 1), groups=c)
    return torch.cat([r_h, r_v], 1)


# --------------------------------------------------------------------------------------------------- network

class Encoder(nn.Module):
    """:data:`ENCODER_SPEC` as ``nn.Sequential`` (module docstring): ``(N, C, S, S)`` → ``(N, 128, ⌈S/16⌉, ⌈S/16⌉)``,
    non-negative (ReLU last)."""

    def __init__(self, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for cout, stride in ENCODER_SPEC:
            layers += [nn.Conv2d(cin, cout, 3, stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """The encoder's mirror image (module docstring): ``(N, 128, s, s)`` → ``(N, out_channels, 16s, 16s)``.
    ``output_activation``: ``"tanh"`` (plain ForensicTransfer, RGB in [-1, 1]) or None (the residual input)."""

    def __init__(self, out_channels: int, output_activation: str | None = None):
        super().__init__()
        if output_activation not in (None, "tanh"):
            raise ValueError(f"output_activation must be None or 'tanh', got {output_activation!r}")
        layers: list[nn.Module] = []
        cin = LATENT_CHANNELS
        for cout in DECODER_SPEC:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1),
                       nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        layers.append(nn.Conv2d(cin, out_channels, 3, padding=1))
        if output_activation == "tanh":
            layers.append(nn.Tanh())
        self.layers = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent)


def activations(latent: torch.Tensor) -> torch.Tensor:
    """``a_c = ‖h_c‖₁ / K_c`` of the two latent halves: ``(N, 128, h, w)`` → ``(N, 2)``, column c = class c
    (0 = real: channels 0–63; 1 = fake: channels 64–127). Raises ValueError for an odd channel count."""
    n, c = latent.shape[:2]
    if c % HALVES:
        raise ValueError(f"the latent's {c} channels do not split into {HALVES} halves")
    return latent.reshape(n, HALVES, -1).abs().mean(2)


def select_half(latent: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The latent with every half but ``keep`` (``(N,)`` class indices) set to zero; same shape."""
    n, c, h, w = latent.shape
    mask = F.one_hot(keep.long(), HALVES).to(latent.dtype).view(n, HALVES, 1, 1, 1)
    return (latent.reshape(n, HALVES, c // HALVES, h, w) * mask).reshape(n, c, h, w)


def activations_to_logits(act: torch.Tensor) -> torch.Tensor:
    """Activations ``(N, 2)`` (column 1 = fake) → emdlib logits ``(N, 2)``: the activations themselves (module
    docstring; ``argmax`` = the paper's decision, ``softmax[:, 1] = σ(a_1 − a_0)``)."""
    return act


def activation_loss(act: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``L_act = mean_i(|a_{i,1} − y_i| + |a_{i,0} − (1 − y_i)|)``: ``act`` ``(N, 2)``, ``label`` ``(N,)`` with
    1 = fake. 0 when the true half's activation is 1 and the other's 0; a scalar."""
    y = label.to(act.dtype)
    return ((act[:, 1] - y).abs() + (act[:, 0] - (1 - y)).abs()).mean()


def forensic_transfer_loss(act: torch.Tensor, reconstruction: torch.Tensor, target: torch.Tensor,
                           label: torch.Tensor, gamma: float = GAMMA) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
    """``(L, L_act, L_rec)`` with ``L = γ·L_act + L_rec`` (module docstring): ``L_rec`` the mean absolute
    difference between ``reconstruction`` and ``target`` (the network's input, same shape; ValueError otherwise),
    ``reconstruction`` decoded from the true class's half."""
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and input {tuple(target.shape)} differ in "
                         "shape")
    loss_act = activation_loss(act, label)
    loss_rec = F.l1_loss(reconstruction, target)
    return gamma * loss_act + loss_rec, loss_act, loss_rec


class ForensicTransfer(DetectorNet):
    """ForensicTransfer, by default on residuals (FT-res; module docstring).

    ``input_size``: the side the shared input is resized to (a multiple of 16, default 256); ``residual``: the
    6-channel high-pass residual input (True, FT-res) or the shared RGB input (False, plain ForensicTransfer).

    ``forward(image, fer_image=None, label=None)`` → ``DetectorOutput(logits (N, 2) = [a_0, a_1], index 1 = fake,
    mask_logits None, extras)`` with extras ``activations`` (N, 2), ``latent`` (N, 128, S/16, S/16), ``input`` (the
    network's input, (N, 6 or 3, S, S)), ``selected`` (N,): the half decoded — ``label`` when given (emdlib's
    1 = fake), else the predicted class — and ``reconstruction`` (same shape as ``input``). The training loop calls
    it without labels; :meth:`compute_loss` then decodes the true halves again where the prediction differs (as
    ClassNSeg's :meth:`~emdlib.baselines.classnseg.MultiTask.compute_loss`). Decoding in every forward pass keeps the
    decoder's BatchNorm statistics those of the predicted halves that evaluation decodes, also when they are
    recomputed (:func:`emdlib.train.recompute_bn_statistics` runs the forward pass only).
    """

    def __init__(self, input_size: int = INPUT_SIZE, residual: bool = True):
        super().__init__()
        if input_size < DOWNSAMPLING or input_size % DOWNSAMPLING:
            raise ValueError(f"ForensicTransfer input size must be a positive multiple of {DOWNSAMPLING} (four "
                             f"stride-2 convolutions, mirrored by the decoder), got {input_size}")
        self.input_size = input_size
        self.residual = residual
        channels = 3 * len(RESIDUAL_DIRECTIONS) if residual else 3
        self.encoder = Encoder(channels)
        self.decoder = Decoder(channels, None if residual else "tanh")

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """Shared input ``(N, 3, H, W)`` in [-1, 1] → the network's input at ``input_size``²: the residual
        (:func:`residual` of the 0–255 RGB) or, without ``residual``, the shared RGB resized."""
        if not self.residual:
            return inputs.resize(image, self.input_size)
        return residual(inputs.resize(inputs.to_rgb01(image), self.input_size) * 255.0)

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None,
                label: torch.Tensor | None = None) -> DetectorOutput:
        x = self.prepare(image)
        latent = self.encoder(x)
        act = activations(latent)
        selected = label.long() if label is not None else act.argmax(1)
        return DetectorOutput(logits=activations_to_logits(act),
                              extras={"activations": act, "latent": latent, "input": x, "selected": selected,
                                      "reconstruction": self.decoder(select_half(latent, selected))})

    def compute_loss(self, output: DetectorOutput, batch: Mapping[str, Any]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``γ·L_act + L_rec`` (:func:`forensic_transfer_loss`) against ``batch["label"]``, the reconstruction
        decoded from the true halves (decoded again here unless the forward pass selected exactly those)."""
        label = batch["label"].long()
        extras = output.extras
        rec = extras["reconstruction"]
        if not torch.equal(extras["selected"], label):
            rec = self.decoder(select_half(extras["latent"], label))
        loss, loss_act, loss_rec = forensic_transfer_loss(extras["activations"], rec, extras["input"], label)
        return loss, {"loss_cls": loss_act.detach(), "loss_rec": loss_rec.detach()}
