"""The contract every manipulation detector keeps: one output type and one base class (as segmentation_models_pytorch
gives all its models one base that owns ``forward``).

EMD, EMD without its FER stream ("XceptionNet (seg)"), the ablation variants and every neural baseline return the
same :class:`DetectorOutput` and derive from :class:`DetectorNet` (the network; :class:`emdlib.detect.Detector`
wraps a trained one for ``emd detect``), so that one training loop (:func:`emdlib.train.fit`), one prediction and
metric path (:func:`emdlib.train.predict`, :mod:`emdlib.metrics`), ``emd detect`` and the figures serve them all
without asking what a model happens to define.

* ``forward(image, fer_image=None) -> DetectorOutput``: ``image`` ``(N, 3, S, S)`` RGB ``(x - 0.5) / 0.5``
  (:func:`emdlib.data.transforms.xception_input`), ``fer_image`` ``(N, 3, 96, 96)`` BGR in [0, 1]
  (:func:`emdlib.data.transforms.esr_input`) or None;
* ``compute_loss(output, batch) -> (loss, parts)``: Eq. 8 (:func:`manipulation_loss`) unless the system's own paper
  trains with another loss (the baselines override it);
* ``warmup_parameters()``: what trains in the warm-up epochs (§IV-B "we fix all weights up to the last convolutional
  layer"); by default everything trainable;
* ``trainable_parameters()``: what the optimiser holds; by default every parameter that requires a gradient (EMD
  leaves out its frozen FER stream, Algorithm 1);
* ``after_step()``: called after every optimiser step (Bayar & Stamm's constraint projection); by default nothing;
* ``fit_classifier(batches) -> bool``: called once after training with the unaugmented training split, for a system
  whose final classifier is fitted on the trained network's features (DCNN's ProCRC); by default nothing (False).
* ``select_samples(epoch, total_epochs, batches)``: called at the start of every epoch with a pass over the training
  split, for a system that chooses from its own predictions which training samples get extra supervision (LAE's
  active learning); only when a class overrides it (``selects_samples()``), so the loop builds no pass otherwise;
* ``training_data(dataset, seed) -> Dataset``: the set the study trains the network on, made from the cell's
  training split, for a system whose paper trains on data of its own making (Face X-ray's blended real faces); by
  default the split itself.

The Steg.Features + SVM baseline is a scikit-learn Pipeline, not a torch detector.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


@dataclass
class DetectorOutput:
    """What a detector returns for a batch of ``N`` faces.

    ``logits``: ``(N, 2)`` class logits, index 1 = fake (P(fake) = ``softmax(logits)[:, 1]``).
    ``mask_logits``: ``(N, 1, H, W)`` per-pixel manipulation logits at the input size (``sigmoid`` → P(manipulated)),
    or None for a classifier without a segmentation head.
    ``extras``: whatever else a system exposes (EMD: ``latent``, ``fer_branch``, ``fer_class``; MultiTask: the
    activations and decoder outputs its own loss needs; MesoNet: ``official_output``).
    """

    logits: torch.Tensor
    mask_logits: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def prob(self) -> torch.Tensor:
        """P(fake) ``(N,)`` in [0, 1], computed in float32."""
        return torch.softmax(self.logits.float(), dim=1)[:, 1]

    @property
    def mask_prob(self) -> torch.Tensor | None:
        """P(manipulated) per pixel ``(N, H, W)`` in [0, 1] (float32), or None without a mask head."""
        return None if self.mask_logits is None else torch.sigmoid(self.mask_logits.float())[:, 0]


def manipulation_loss(output: DetectorOutput, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 8: ``L_MANI = L_cls + L_seg`` (paper §III-D).

    ``L_cls`` (Eq. 6): cross-entropy of the 2-way logits (index 1 = fake) against ``batch["label"]``.
    ``L_seg`` (Eq. 7): binary cross-entropy of ``sigmoid(mask_logits)`` against the {0,1} ``batch["mask"]``
    ``(N, 1, H, W)``, averaged over pixels and images (computed from logits for numerical stability). A detector
    without a mask head (``mask_logits`` None) gets ``L_seg = 0``. Raises ValueError when the mask and the mask logits
    differ in shape.
    """
    logits = output.logits
    loss_cls = F.cross_entropy(logits.float(), batch["label"].long())
    if output.mask_logits is None:
        loss_seg = logits.new_zeros((), dtype=torch.float32)
    else:
        mask = batch["mask"]
        if mask.shape != output.mask_logits.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match mask_logits "
                             f"{tuple(output.mask_logits.shape)}")
        loss_seg = F.binary_cross_entropy_with_logits(output.mask_logits.float(), mask.float())
    loss = loss_cls + loss_seg
    # detached 0-d tensors, not floats: the training loop reads them from the GPU once per log interval, not per step
    return loss, {"loss": loss.detach(), "loss_cls": loss_cls.detach(), "loss_seg": loss_seg.detach()}


class DetectorNet(nn.Module):
    """Base class of every trainable manipulation detector (module docstring). Holds no parameters itself."""

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        raise NotImplementedError

    def compute_loss(self, output: DetectorOutput, batch: Mapping[str, Any]
                     ) -> tuple[torch.Tensor, Mapping[str, float | torch.Tensor]]:
        """The training loss of the system and its parts; Eq. 8 (:func:`manipulation_loss`) by default."""
        return manipulation_loss(output, batch)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser holds: every parameter that requires a gradient."""
        return (p for p in self.parameters() if p.requires_grad)

    def warmup_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters trained in the warm-up epochs; by default all of :meth:`trainable_parameters`."""
        return self.trainable_parameters()

    def has_warmup(self) -> bool:
        """Whether the warm-up trains a part of the network only (the class overrides :meth:`warmup_parameters`)."""
        return type(self).warmup_parameters is not DetectorNet.warmup_parameters

    def after_step(self) -> None:
        """Called by the training loop after every optimiser step; nothing by default."""

    def fit_classifier(self, batches: Iterable[Mapping[str, Any]]) -> bool:
        """Fit a classifier on the trained network's features, after :func:`emdlib.train.fit`.

        ``batches``: the unaugmented training split, mappings with at least ``image`` and ``label`` as the training
        loop's. Returns True when the model changed (the study then re-saves its best checkpoint with
        :meth:`spec`), False when the system has no such classifier (the default: nothing is done).
        """
        return False

    def select_samples(self, epoch: int, total_epochs: int, batches: Iterable[Mapping[str, Any]]) -> None:
        """Choose training samples from the network's predictions before epoch ``epoch`` (0-based) of
        ``total_epochs`` (LAE's active learning, :meth:`emdlib.baselines.lae.LAE.select_samples`). ``batches``: the
        training split in a fixed order, mappings as the training loop's. What is chosen must live in the module's
        state (buffers), so checkpoints and a resumed run keep it. Nothing by default."""

    def selects_samples(self) -> bool:
        """Whether the class overrides :meth:`select_samples` (only then does the training loop make the pass)."""
        return type(self).select_samples is not DetectorNet.select_samples

    def training_data(self, dataset: Dataset, seed: int) -> Dataset:
        """The dataset :func:`emdlib.study.experiments.run_cell` trains this network on, given the cell's training
        split ``dataset`` (items as :class:`emdlib.data.datasets.ManipulationDataset`'s) and the run's ``seed``; it
        must serve items with the same keys. By default ``dataset`` itself (every system but Face X-ray, which
        trains on blended real faces, :meth:`emdlib.baselines.face_xray.FaceXray.training_data`). Validation and
        test data are never changed."""
        return dataset

    def spec(self) -> dict[str, Any] | None:
        """The registry entry (``{"name", "kwargs"}``, :mod:`emdlib.registry`) that rebuilds this network, when the
        network can say (EMD); None otherwise — the study then records the name and arguments it built it from."""
        return None
