"""Two-stream: Zhou, Han, Morariu, Davis, "Two-Stream Neural Networks for Tampered Face Detection", CVPRW 2017
(arXiv:1803.11276; EMD Table III's "Two-stream" [61]).

The paper's abstract: "We train GoogLeNet to detect tampering artifacts in a face classification stream, and train a
patch based triplet network to leverage features capturing local noise residuals and camera characteristics as a
second stream"; the two streams' scores are fused. Its body could not be read where this was written (only the
abstract and a third-party summary: the face stream is GoogLeNet Inception-v3 fine-tuned as a tampered/authentic
classifier on faces resized to 299 × 299); every value it would fix is *inferred* in the recipe ``two_stream``. Here:

* **Face classification stream**: torchvision's ``inception_v3`` (GoogLeNet Inception-v3; ImageNet weights
  ``Inception_V3_Weights.IMAGENET1K_V1`` with ``pretrained``), its 1000-class ``fc`` replaced by a 2-class layer. Its
  auxiliary classifier is removed (``aux_logits`` off, as torchvision does for inference): no source read here
  mentions one in fine-tuning, and the 2-class main head is the stream's output (deviation
  ``two-stream-face-stream``; *inferred*).
* **Input** (:meth:`TwoStream.face_input`, the one place): the shared ``(x - 0.5) / 0.5`` face is what the ported
  Inception-v3 weights expect (TensorFlow's ``[-1, 1]`` input; torchvision's ``transform_input`` converts
  ImageNet-normalised input *to* it, so it is off here), resized (bilinear, antialiased) to ``face_size =
  max(input_size, 75)``: 299 in the recipe; Inception-v3's stride-32 layers need at least 75 px, so the cpu
  preset's 64-px faces are upsampled to 75 (deviation ``two-stream-face-stream``).
* **Patch triplet stream**: :mod:`emdlib.baselines.patch_triplet` (patches of the face at its own resolution,
  162-D steganalysis features, a triplet-trained embedding, a linear SVM on it).
* **Training** (:meth:`TwoStream.compute_loss`): one loop trains both streams on the same batches with the sum of the
  face stream's softmax cross-entropy and the patch stream's in-batch triplet loss. The streams share no parameter,
  so each gets exactly its own gradient: training each on the same batches (deviation ``two-stream-joint-training``).
* **SVM**: after training, :meth:`TwoStream.fit_classifier` (the study's hook
  :meth:`emdlib.models.detector.DetectorNet.fit_classifier`) embeds every patch of the unaugmented training split and
  fits the linear SVM (at most ``max_svm_patches`` patches, a seeded uniform subset). Its weight and bias are
  buffers of the state dict (fixed sizes: the checkpoint rebuilds through :mod:`emdlib.registry` as built).
* **Fusion** (:meth:`TwoStream.forward`): the face stream's log-odds of fake ``z_f = l₁ − l₀`` plus the patch
  stream's ``z_p`` = the mean over the face's patches of the SVM's Platt-calibrated log-odds: ``z = z_f + z_p``,
  returned as the logits ``(−z/2, z/2)`` so that P(fake) = σ(z) — the sum of two log-odds, as a naive-Bayes fusion of
  two calibrated scores (deviation ``two-stream-fusion``: the two streams' scores are fused; how is *inferred*).
  Before the SVM is fitted (training, model selection) the logits are the face stream's.
* **Output**: ``DetectorOutput.logits`` ``(N, 2)``, no mask; ``extras``: ``face_logits`` ``(N, 2)``,
  ``patch_embeddings`` ``(N, P, 128)`` and, once fitted, ``patch_scores`` ``(N, P)`` (calibrated log-odds).

Parameter counts (:func:`parameter_counts`): torchvision's Inception-v3 has 27,161,264 parameters with its auxiliary
classifier and 1000 classes, 23,834,568 without; the face stream (2 classes, no auxiliary classifier) 21,789,666;
the patch triplet network 140,740. No count from the paper is known here (its body could not be read).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from emdlib.baselines import inputs, patch_triplet
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

#: Inception-v3's ImageNet input side (px).
INPUT_SIZE = 299
#: The smallest side torchvision's Inception-v3 runs on (its stride-32 layers and 8×8 → 1 pooling need 75 px).
MIN_FACE_SIZE = 75
#: Width of Inception-v3's pooled feature (the input of its ``fc``).
FACE_FEATURES = 2048
NUM_CLASSES = 2
#: The patch SVM's C (scikit-learn's default; inferred) and the cap on the patches it is fitted on.
SVM_C = 1.0
MAX_SVM_PATCHES = 200_000
TORCHVISION_NAME, TORCHVISION_WEIGHTS = "inception_v3", "Inception_V3_Weights"


def inception_v3(pretrained: bool | str | os.PathLike = False) -> nn.Module:
    """torchvision's Inception-v3 (1000 classes, with its auxiliary classifier) from random weights (False),
    torchvision's ImageNet weights (True) or a local file / folder entry ``inception_v3.*``
    (:func:`emdlib.baselines.dcnn._torchvision_net`: errors name the file, or say how to give one offline)."""
    from emdlib.baselines.dcnn import _torchvision_net

    return _torchvision_net(TORCHVISION_NAME, pretrained, TORCHVISION_WEIGHTS, init_weights=True)


def describe_initial_weights(pretrained: bool | str | os.PathLike | None) -> dict[str, Any]:
    """What the face stream started from, for run records: ``{"source": "random"}``, ``{"source": "torchvision",
    "weights": "Inception_V3_Weights.IMAGENET1K_V1"}`` or ``{"source": "file", "file", "sha256"}``. (The patch
    triplet network always starts from random weights.)"""
    if pretrained is False or pretrained is None:
        return {"source": "random"}
    if pretrained is True:
        return {"source": "torchvision", "weights": f"{TORCHVISION_WEIGHTS}.IMAGENET1K_V1"}
    from emdlib.io import sha256_file
    from emdlib.pretrained import weights_file

    path = weights_file(pretrained, TORCHVISION_NAME)
    return {"source": "file", "file": str(path), "sha256": sha256_file(path)}


def parameter_counts() -> dict[str, int]:
    """Parameters (built on the meta device: nothing allocated or downloaded) of torchvision's Inception-v3 with 1000
    classes with and without its auxiliary classifier, of our 2-class face stream and of the patch triplet network."""
    import torchvision.models as tvm

    with torch.device("meta"):
        full = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False)
        face = TwoStream._face_stream(tvm.inception_v3(weights=None, aux_logits=True, init_weights=False))
        triplet = patch_triplet.PatchTripletNet()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"inception_v3": count(full), "inception_v3_no_aux": count(full) - count(full.AuxLogits),
            "face_stream": count(face), "patch_triplet": count(triplet)}


class TwoStream(DetectorNet):
    """Face classification stream (Inception-v3) + patch triplet stream (steganalysis features, triplet embedding,
    linear SVM), scores summed (module docstring).

    ``input_size``: side the face stream is built for (px; it runs at ``max(input_size, 75)``); ``pretrained``:
    False, True (torchvision ImageNet) or a local folder/file for Inception-v3; ``patch_size``: the patch side (px;
    at most half the face); ``margin``: the triplet margin; ``svm_c``: the SVM's C; ``max_svm_patches``: the cap on
    the SVM's training patches; ``seed``: the subset's seed. Raises ValueError for sizes below 1 or a margin ≤ 0.
    """

    def __init__(self, input_size: int = INPUT_SIZE, pretrained: bool | str = False,
                 patch_size: int = patch_triplet.PATCH_SIZE, margin: float = patch_triplet.MARGIN,
                 svm_c: float = SVM_C, max_svm_patches: int = MAX_SVM_PATCHES, seed: int = 0):
        super().__init__()
        if min(input_size, patch_size, max_svm_patches) < 1 or margin <= 0 or svm_c <= 0:
            raise ValueError(f"TwoStream needs input_size, patch_size, max_svm_patches >= 1 and margin, svm_c > 0; "
                             f"got {input_size}, {patch_size}, {max_svm_patches}, {margin}, {svm_c}")
        self.input_size = int(input_size)
        self.face_size = max(self.input_size, MIN_FACE_SIZE)
        if self.face_size != self.input_size:
            log.info("Two-stream: faces of %d px are upsampled to %d px, Inception-v3's smallest input",
                     self.input_size, self.face_size)
        self.patch_size = int(patch_size)
        self.margin = float(margin)
        self.svm_c = float(svm_c)
        self.max_svm_patches = int(max_svm_patches)
        self.seed = int(seed)
        self.face_stream = self._face_stream(inception_v3(pretrained))
        self.patch_stream = patch_triplet.PatchTripletNet()
        self.register_buffer("svm_weight", torch.zeros(patch_triplet.EMBEDDING_DIM))
        self.register_buffer("svm_bias", torch.zeros(()))
        self.register_buffer("svm_fitted", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _face_stream(net: nn.Module) -> nn.Module:
        """Inception-v3 as the 2-class face stream: auxiliary classifier removed, ``transform_input`` off (the input
        is already ``[-1, 1]``), ``fc`` → ``Linear(2048, 2)``."""
        net.aux_logits, net.AuxLogits, net.transform_input = False, None, False
        net.fc = nn.Linear(FACE_FEATURES, NUM_CLASSES)
        return net

    @property
    def classifier_fitted(self) -> bool:
        """Whether the patch SVM is fitted (here or loaded from a checkpoint)."""
        return bool(self.svm_fitted)

    def face_input(self, image: torch.Tensor) -> torch.Tensor:
        """Shared ``(x - 0.5) / 0.5`` RGB ``(N, 3, S, S)`` → ``(N, 3, face_size, face_size)``, still in [-1, 1] (the
        ported Inception-v3 weights' own input scale), resized bilinearly with antialiasing."""
        return inputs.resize(image, self.face_size)

    def embed_patches(self, image: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``(N, P, 128)`` of the patches of shared-input faces ``(N, 3, S, S)``."""
        return self.patch_stream(patch_triplet.patch_features(image, self.patch_size))

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        face_logits = self.face_stream(self.face_input(image))
        embeddings = self.embed_patches(image)
        extras = {"face_logits": face_logits, "patch_embeddings": embeddings}
        if not self.classifier_fitted:
            return DetectorOutput(logits=face_logits, extras=extras)
        with torch.autocast(image.device.type, enabled=False):
            patch_scores = embeddings.float() @ self.svm_weight + self.svm_bias
            f = face_logits.float()
            z = (f[:, 1] - f[:, 0]) + patch_scores.mean(1)
        extras["patch_scores"] = patch_scores
        return DetectorOutput(logits=torch.stack([-z / 2, z / 2], dim=1), extras=extras)

    def compute_loss(self, output: DetectorOutput, batch: Mapping[str, Any]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Softmax cross-entropy of the face stream plus the patch stream's in-batch triplet loss
        (:func:`emdlib.baselines.patch_triplet.triplet_loss`); parts as detached 0-d tensors (no host read-back)."""
        face = F.cross_entropy(output.extras["face_logits"].float(), batch["label"].long())
        triplet = patch_triplet.triplet_loss(output.extras["patch_embeddings"], self.margin)
        loss = face + triplet
        return loss, {"loss": loss.detach(), "loss_face": face.detach(), "loss_triplet": triplet.detach()}

    @torch.no_grad()
    def fit_classifier(self, batches: Iterable[Mapping[str, Any]]) -> bool:
        """Fit the Platt-calibrated patch SVM (:func:`emdlib.baselines.patch_triplet.fit_calibrated_svm`) on the
        embeddings of every patch of ``batches`` (the unaugmented training split; each a mapping with ``image``
        ``(B, 3, S, S)`` and ``label`` ``(B,)``), each patch labelled with its face's label; a seeded uniform subset of
        at most ``max_svm_patches`` patches when there are more. Replaces an earlier fit.
        Returns True. Raises ValueError when ``batches`` hold no image or one class only."""
        device = self.svm_weight.device
        was_training = self.training
        self.eval()
        feats, labels = [], []
        for batch in tqdm(batches, desc="Two-stream patch embeddings for the SVM", leave=False, disable=None):
            emb = self.embed_patches(batch["image"].to(device)).float().cpu()
            feats.append(emb.reshape(-1, emb.shape[-1]))
            labels.append(torch.as_tensor(batch["label"]).long().repeat_interleave(emb.shape[1]))
        self.train(was_training)
        if not feats:
            raise ValueError("the patch SVM needs training images, got none")
        x, y = torch.cat(feats), torch.cat(labels)
        if len(x) > self.max_svm_patches:
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))[: self.max_svm_patches]
            log.info("patch SVM: a seeded subset of %d of %d training patches", self.max_svm_patches, len(x))
            x, y = x[keep], y[keep]
        weight, bias = patch_triplet.fit_calibrated_svm(x.numpy(), y.numpy(), self.svm_c, self.seed)
        self.svm_weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        self.svm_bias.fill_(bias)
        self.svm_fitted.fill_(True)
        log.info("patch SVM fitted on %d patches (%s per class)", len(y), torch.bincount(y).tolist())
        return True
