"""MultiTask / ClassNSeg (Nguyen et al., BTAS 2019) — the Y-shaped autoencoder that classifies and segments
(EMD Tables II–IV; reference-facts §D.6, code CNS:`model/ae.py`, `train.py`, `test_seg.py`), its loader
:func:`load_classnseg` for the official checkpoints, and ``MultiTaskEnsFER`` (EMD Tables II–V, "With FER").

* Encoder: 9 × (Conv 3×3 p1 → BN → ReLU), channels 8,8,16,16,32,32,64,64,128, strides 1,2,1,2,1,2,1,2,1
  → latent 128×16×16 for a 256×256 input. 148,200 parameters.
* Activation-based classification: the latent is 2 groups × 64 channels; ``a_g = mean |latent_g|``. Official
  group/label index: 0 = fake, 1 = real; predict 1 when a₁ ≥ a₀.
* The non-selected group is zeroed before decoding — selected by the ground-truth label in training (the losses
  of :meth:`MultiTask.compute_loss` in training mode) and by the predicted label in evaluation (``test_seg.py``).
* Decoder (156,749 parameters): shared 4 × (ConvT 3×3 → BN → ReLU) 128→64→64→32→32 (×4 upsampling), then a
  segmentation head (… → 2 channels, softmax; channel 1 = manipulated) and a reconstruction head (… → 3, tanh).
* Loss (:meth:`MultiTask.compute_loss`): ``L_act + γ·L_seg + γ·L_rec``, γ = 1, with
  ``L_act = mean_batch(|a₁ − y| + |a₀ − (1 − y)|)`` (y official: 1 = real), ``L_seg`` = cross-entropy applied to the
  already-softmaxed 2-channel map (the official double softmax, kept for fidelity) and ``L_rec`` = MSE between the
  reconstruction and the normalised input.

Label convention: :func:`official_to_logits` is the one place that maps the official (0 = fake) scores to emdlib's
(index 1 = fake): ``logits = [a₁, a₀]`` so that ``softmax(logits)[1] = softmax([a₀, a₁])[0]`` = the official
P(fake); ``_official_labels`` maps our labels the other way for the loss and the group selection.

Input: shared ``(x - 0.5) / 0.5`` RGB → [0, 1] → ``input_size``² (default 256, the official size; bilinear with
antialiasing when the preset size differs; the official test scripts feed 256×256 crops unchanged) → per-channel
ImageNet mean/std (the official ``Normalize_3D`` applied to a 4-D batch mixes up images and channels, §D.6; we
normalise per channel as it does on one image). ``mask_logits`` = ``seg_logit₁ − seg_logit₀`` (so
``sigmoid(mask_logits)`` = the official softmax channel 1), resized back to the input size when it differs. The
network is fully convolutional (the latent is ``input_size / 16`` on a side), so a preset whose faces are smaller
than 256 px may run it at the faces' own size (:func:`emdlib.study.experiments.baseline_kwargs` does): upsampling a 64-px
face to 256 adds no information, only 16× the compute.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from emdlib.baselines import inputs
from emdlib.checkpoint import load_torch_state_dict
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

INPUT_SIZE = 256
LATENT_CHANNELS = 128
GROUPS = 2  # official group index = official label: 0 = fake, 1 = real
ENCODER_SPEC = ((8, 1), (8, 2), (16, 1), (16, 2), (32, 1), (32, 2), (64, 1), (64, 2), (128, 1))  # (out, stride)
SHARED_SPEC = ((64, 1), (64, 2), (32, 1), (32, 2))
HEAD_SPEC = ((16, 1), (16, 2), (8, 1), (8, 2))


def official_to_logits(a0: torch.Tensor, a1: torch.Tensor) -> torch.Tensor:
    """Group activations (official: a₀ = fake, a₁ = real) → emdlib logits ``(N, 2)``, index 1 = fake.

    The one place where ClassNSeg's label convention is mapped to ours (module docstring).
    """
    return torch.stack([a1, a0], dim=1)


def _official_labels(label: torch.Tensor) -> torch.Tensor:
    """emdlib labels (1 = fake) → official labels (0 = fake, 1 = real)."""
    return 1 - label.long()


def _init_weights(m: nn.Module) -> None:
    """Official initialisation (CNS ``weights_init``): conv N(0, 0.02); BN weight N(0.5, 0.02), bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 0.5, 0.02)
        nn.init.zeros_(m.bias)


def _conv_stack(cin: int, spec, transpose: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for cout, stride in spec:
        if transpose:
            layers.append(nn.ConvTranspose2d(cin, cout, 3, stride, padding=1, output_padding=stride - 1))
        else:
            layers.append(nn.Conv2d(cin, cout, 3, stride, padding=1))
        layers += [nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return layers


class Encoder(nn.Module):
    """ClassNSeg encoder; state-dict keys ``encoder.{0,1,3,4,…}`` as the official checkpoints."""

    def __init__(self, depth: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(*_conv_stack(depth, ENCODER_SPEC, transpose=False))
        self.encoder.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class Decoder(nn.Module):
    """ClassNSeg decoder: ``shared`` trunk, ``segmenter`` (2-channel softmax head, returned as logits here) and
    ``decoder`` (reconstruction, tanh). Returns ``(seg_logits (N,2,H,W), reconstruction (N,depth,H,W))``."""

    def __init__(self, depth: int = 3):
        super().__init__()
        self.shared = nn.Sequential(*_conv_stack(LATENT_CHANNELS, SHARED_SPEC, transpose=True))
        self.segmenter = nn.Sequential(*_conv_stack(32, HEAD_SPEC, transpose=True),
                                       nn.ConvTranspose2d(8, 2, 3, 1, padding=1))
        self.decoder = nn.Sequential(*_conv_stack(32, HEAD_SPEC, transpose=True),
                                     nn.ConvTranspose2d(8, depth, 3, 1, padding=1), nn.Tanh())
        # the official code leaves the shared trunk at PyTorch's default init
        self.segmenter.apply(_init_weights)
        self.decoder.apply(_init_weights)

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.shared(latent)
        return self.segmenter(h), self.decoder(h)


class MultiTask(DetectorNet):
    """ClassNSeg as an emdlib model (module docstring).

    ``forward(image, fer_image=None, label=None)`` → ``DetectorOutput(logits, mask_logits, extras)`` with extras
    ``seg_logits``, ``reconstruction``, ``activations`` (N, 2) official [a₀, a₁], ``selected``, ``latent``,
    ``normalised_input``. With ``label`` (emdlib
    convention) given in training mode the decoder sees the ground-truth group, otherwise the predicted one
    (:meth:`compute_loss` re-decodes with the ground truth in training when needed).
    """

    def __init__(self, input_size: int = INPUT_SIZE):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"ClassNSeg input size must be a multiple of 16 (four stride-2 convs), got {input_size}")
        self.input_size = input_size
        self.encoder = Encoder(3)
        self.decoder = Decoder(3)
        self.register_buffer("mean", torch.tensor(inputs.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(inputs.IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """Shared input → ImageNet-normalised ``input_size``² RGB (module docstring)."""
        return (inputs.resize(inputs.to_rgb01(image), self.input_size) - self.mean) / self.std

    def fuse(self, latent: torch.Tensor, fer_image: torch.Tensor | None) -> torch.Tensor:
        """Hook for :class:`MultiTaskEnsFER`; MultiTask uses the encoder's latent as is."""
        return latent

    def _decode(self, latent: torch.Tensor, selected: torch.Tensor, out_size) -> dict[str, torch.Tensor]:
        """Zero the non-selected group (official label index) and decode."""
        n, c, h, w = latent.shape
        keep = F.one_hot(selected.long(), GROUPS).to(latent.dtype).view(n, GROUPS, 1, 1, 1)
        kept = (latent.reshape(n, GROUPS, c // GROUPS, h, w) * keep).reshape(n, c, h, w)
        seg_logits, reconstruction = self.decoder(kept)
        mask_logits = (seg_logits[:, 1] - seg_logits[:, 0]).unsqueeze(1)
        if tuple(mask_logits.shape[-2:]) != tuple(out_size):
            mask_logits = F.interpolate(mask_logits, size=out_size, mode="bilinear", align_corners=False)
        return {"mask_logits": mask_logits, "seg_logits": seg_logits, "reconstruction": reconstruction}

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None,
                label: torch.Tensor | None = None) -> DetectorOutput:
        x = self.normalise(image)
        latent = self.fuse(self.encoder(x), fer_image)
        n, c, h, w = latent.shape
        act = latent.reshape(n, GROUPS, -1).abs().mean(2)  # (N, 2): official [a₀ (fake), a₁ (real)]
        predicted = (act[:, 1] >= act[:, 0]).long()  # official label
        selected = _official_labels(label) if (self.training and label is not None) else predicted
        decoded = self._decode(latent, selected, image.shape[-2:])
        mask_logits = decoded.pop("mask_logits")
        return DetectorOutput(logits=official_to_logits(act[:, 0], act[:, 1]), mask_logits=mask_logits,
                              extras={**decoded, "activations": act, "selected": selected, "latent": latent,
                                      "normalised_input": x})

    def compute_loss(self, output: DetectorOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_act + L_seg + L_rec`` (module docstring; official γ = 1).

        In training mode the segmentation and reconstruction losses use the decoder output for the
        **ground-truth** group, as the official ``train.py``: the training loop calls ``model(image, fer_image)``
        without labels, so when the forward pass selected the predicted group for some samples the latent is
        decoded again here with the ground-truth selection.
        """
        y = _official_labels(batch["label"])
        extras = output.extras
        if self.training and not torch.equal(extras["selected"], y):
            extras = {**extras, **self._decode(extras["latent"], y, output.mask_logits.shape[-2:])}
        act = extras["activations"]
        yf = y.float()
        loss_act = (torch.abs(act[:, 1] - yf) + torch.abs(act[:, 0] - (1.0 - yf))).mean()
        seg = extras["seg_logits"]
        mask = batch["mask"]
        if tuple(mask.shape[-2:]) != tuple(seg.shape[-2:]):
            mask = F.interpolate(mask.float(), size=seg.shape[-2:], mode="nearest")
        target = (mask[:, 0] >= 0.5).long()
        loss_seg = F.cross_entropy(seg.softmax(1), target)  # official double softmax
        loss_rec = F.mse_loss(extras["reconstruction"], extras["normalised_input"])
        loss = loss_act + loss_seg + loss_rec
        return loss, {"loss_cls": loss_act.detach(), "loss_seg": loss_seg.detach(), "loss_rec": loss_rec.detach()}


def load_classnseg(model: MultiTask, encoder_path: str | os.PathLike, decoder_path: str | os.PathLike) -> MultiTask:
    """Load the official ``encoder_N.pt`` / ``decoder_N.pt`` state dicts (``weights_only=True``) into ``model``.

    Strict: every tensor of both files is used and every encoder/decoder tensor is set. Returns ``model``.
    """
    for part, path in (("encoder", encoder_path), ("decoder", decoder_path)):
        sd = load_torch_state_dict(path)
        module = getattr(model, part)
        result = module.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{path}: not a ClassNSeg {part} checkpoint (missing {result.missing_keys}, "
                             f"unexpected {result.unexpected_keys})")
        log.info("loaded %s (%d tensors) into the %s", path, len(sd), part)
    return model


class MultiTaskEnsFER(MultiTask):
    """MultiTask + EnsFER (EMD Tables II–V): the FER stream's selected feature map fused into ClassNSeg's latent.

    As EMD does for Xception (paper §III-D; Eqs. 3–5 select the branch): ``fer.select_branch(fer_image)`` →
    ``fer_map (N, 512, h, w)`` of the most confident ESR branch, bilinearly resized to the latent grid (16×16 at
    256 px), batch-normalised, concatenated to the 128-channel latent and mapped back to 128 channels by a new 1×1
    convolution followed by ReLU. *Inferred* (the paper gives no layer details): the fusion conv is initialised as the
    identity on the latent channels and zero on the FER channels, so a MultiTask loaded with official weights starts
    out unchanged (its latent is post-ReLU, so the ReLU keeps it so) and learns how much FER to use. The FER map is
    batch-normalised first because ESR's post-ReLU map has an arbitrary scale (tens, against the latent's ~1): fed raw,
    its gradients blew the activation-based classification up (first run: loss_cls ≈ 10). The all-"manipulated"
    masks of an early cpu run came from model selection keeping the warm-up epoch, whose decoder had not trained
    (fixed in :func:`emdlib.train.is_better`). The FER network is frozen (``requires_grad=False``, kept in eval
    mode, run under no_grad).

    ``fer``: a module with ``select_branch(x) -> (fer_map, branch, cls)`` (emdlib.models.esr.ESR); built with
    default arguments when omitted (load its weights with ``emdlib.models.esr.load_official_esr``).
    """

    def __init__(self, fer: nn.Module | None = None, fer_channels: int = 512, input_size: int = INPUT_SIZE):
        super().__init__(input_size)
        if fer is None:
            from emdlib.models.esr import ESR

            fer = ESR()
        self.fer = fer
        for p in self.fer.parameters():
            p.requires_grad_(False)
        self.fer.eval()
        self.fer_norm = nn.BatchNorm2d(fer_channels)
        self.fusion = nn.Conv2d(LATENT_CHANNELS + fer_channels, LATENT_CHANNELS, 1)
        with torch.no_grad():
            self.fusion.weight.zero_()
            self.fusion.weight[:, :LATENT_CHANNELS, 0, 0].copy_(torch.eye(LATENT_CHANNELS))
            self.fusion.bias.zero_()

    def train(self, mode: bool = True) -> "MultiTaskEnsFER":
        super().train(mode)
        self.fer.eval()  # frozen: BN statistics stay the FER model's
        return self

    def fuse(self, latent: torch.Tensor, fer_image: torch.Tensor | None) -> torch.Tensor:
        if fer_image is None:
            raise ValueError("MultiTaskEnsFER needs fer_image (N, 3, 96, 96) BGR [0, 1] (transforms.esr_input)")
        with torch.no_grad():
            fer_map, _, _ = self.fer.select_branch(fer_image)
        fer_map = F.interpolate(fer_map.to(latent.dtype), size=latent.shape[-2:], mode="bilinear", align_corners=False)
        return F.relu(self.fusion(torch.cat([latent, self.fer_norm(fer_map)], 1)))

    def warmup_parameters(self) -> Iterator[nn.Parameter]:
        """The newly initialised fusion layers (the rest may come from the official MultiTask weights)."""
        yield from self.fer_norm.parameters()
        yield from self.fusion.parameters()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Everything but the frozen FER network (the training loop's hook, :class:`emdlib.models.detector.DetectorNet`)."""
        fer = {id(p) for p in self.fer.parameters()}
        return (p for p in self.parameters() if id(p) not in fer)
