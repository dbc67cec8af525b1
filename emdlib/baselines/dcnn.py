"""DCNN: Raghavendra, Raja, Venkatesh, Busch, "Transferable Deep-CNN Features for Detecting Digital and Print-Scanned
Morphed Face Images", CVPRW 2017 (EMD Table III's "DCNN", cited there as [27], a slip for [64]).

The paper's abstract: "feature level fusion of the first fully connected layers of two D-CNN (VGG19 and AlexNet) that
are specifically fine-tuned using the morphed face image database", classified with P-CRC
(:mod:`emdlib.baselines.procrc`). Here:

* **Networks**: torchvision's ``alexnet`` and ``vgg19`` (ImageNet weights with ``pretrained``), each with its last
  layer (FC-8, 1000 classes) replaced by a 2-class layer. Fine-tuning trains both on the same batches with the sum
  of their softmax cross-entropies (:meth:`DCNN.compute_loss`); they share no parameter, so this is exactly
  fine-tuning each network separately on the same data.
* **Input**: the shared ``(x - 0.5) / 0.5`` RGB face → [0, 1] → resized (bilinear, antialiased) to ``input_size``
  (224, the networks' ImageNet size; the study caps it at the preset's face size) → ImageNet mean/std
  (:meth:`DCNN.network_input`, the one place).
* **Features** (:meth:`DCNN.features`): the output of each network's first fully connected layer (FC-6, 4096-d)
  after its ReLU — *our reading* of "the first fully connected layers" (the activation a layer passes on) —
  concatenated (AlexNet, then VGG-19: 8192-d) and L2-normalised per sample (*inferred*: the collaborative-
  representation convention, official ProCRC demos ``normc`` their features).
* **Classifier**: after fine-tuning, :meth:`DCNN.fit_classifier` (the detector hook the study calls,
  :meth:`emdlib.models.detector.DetectorNet.fit_classifier`) extracts the features of the (unaugmented) training
  split, keeps a seeded class-stratified random subset of at most ``max_dictionary`` images per class (streaming
  reservoir sampling; the n × n system of ~288,000 training images is infeasible — deviation ``dcnn-dictionary``),
  and fits ProCRC on it. The dictionary, its labels and the projection are buffers of the state dict, sized by the
  constructor argument ``dictionary_size`` (0 before fitting; :meth:`DCNN.spec` records the fitted size), so a
  checkpoint rebuilds through :mod:`emdlib.registry` with the classifier.
* **Output**: ``DetectorOutput.logits`` ``(N, 2)``: once the classifier is fitted, ProCRC's class log-probabilities;
  before (fine-tuning, model selection), the mean of the two heads' log-softmax. ``extras``: ``alexnet_logits``,
  ``vgg19_logits`` (the heads, which the loss trains) and, when fitted, ``procrc_residuals``.

Parameter counts (1000-class torchvision networks; :func:`parameter_counts`): AlexNet 61,100,840 (published 61.1 M),
VGG-19 143,667,240 (published 143.7 M). With 2-class heads: 57,012,034 + 139,578,434.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from emdlib.baselines import inputs
from emdlib.baselines.procrc import procrc_log_prob, procrc_projection, procrc_residuals
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

INPUT_SIZE = 224
#: Width of each network's FC-6 layer; the fused feature is twice this.
FC6_WIDTH = 4096
FEATURE_DIM = 2 * FC6_WIDTH
NUM_CLASSES = 2
#: Default cap of the ProCRC dictionary, per class (deviation ``dcnn-dictionary``).
MAX_DICTIONARY = 4000
#: ProCRC's λ and γ (official ProCRC.m weighting; values inferred, recipe ``dcnn``).
PROCRC_LAMBDA = 1e-2
PROCRC_GAMMA = 1e-2
#: torchvision's ImageNet weights (the ``IMAGENET1K_V1`` sets) of the two networks.
TORCHVISION_WEIGHTS = {"alexnet": "AlexNet_Weights", "vgg19": "VGG19_Weights"}


def _torchvision_net(name: str, pretrained: bool | str | os.PathLike, weights_enum: str | None = None,
                     **random_kwargs: Any) -> nn.Module:
    """torchvision ``alexnet`` / ``vgg19`` (1000 classes; or another torchvision builder ``name`` whose weights enum
    is ``weights_enum``, e.g. Two-stream's ``inception_v3``) from random weights (False), torchvision's ImageNet weights
    (True; RuntimeError saying how to give a file when they cannot be downloaded) or a local file/folder
    (:func:`emdlib.pretrained.weights_file`, folder entries ``alexnet.*`` / ``vgg19.*``; ValueError naming the file
    when it does not fit). ``random_kwargs`` go to the builder when it builds without torchvision's weights."""
    import torchvision.models as tvm

    build = getattr(tvm, name)
    if pretrained is False or pretrained is None:
        return build(weights=None, **random_kwargs)
    if pretrained is True:
        weights = getattr(tvm, weights_enum or TORCHVISION_WEIGHTS[name]).IMAGENET1K_V1
        try:
            return build(weights=weights)
        except Exception as e:  # urllib / OSError offline
            raise RuntimeError(f"ImageNet weights for torchvision {name!r} could not be downloaded "
                               f"({type(e).__name__}: {e}). Give a local folder holding {name}.pth (torchvision's "
                               f"{weights.url.rsplit('/', 1)[-1]}) or {name}.safetensors with "
                               "`emd reproduce -p imagenet_weights FOLDER`, or start from random weights "
                               "(pretrained=False).") from e
    from emdlib.pretrained import read_weights_file, weights_file

    path = weights_file(pretrained, name)
    net = build(weights=None, **random_kwargs)
    try:
        net.load_state_dict(read_weights_file(path), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not hold torchvision {name!r} ImageNet weights ({e})") from e
    log.info("%s: ImageNet weights loaded into torchvision %s", path, name)
    return net


def describe_initial_weights(pretrained: bool | str | os.PathLike | None) -> dict[str, Any]:
    """What DCNN's two networks started from, for run records: ``{"source": "random"}``,
    ``{"source": "torchvision", "weights": {...}}`` or, for a local folder, each network's file and sha256."""
    if pretrained is False or pretrained is None:
        return {"source": "random"}
    if pretrained is True:
        return {"source": "torchvision", "weights": {n: f"{w}.IMAGENET1K_V1" for n, w in TORCHVISION_WEIGHTS.items()}}
    from emdlib.io import sha256_file
    from emdlib.pretrained import weights_file

    files = {n: weights_file(pretrained, n) for n in TORCHVISION_WEIGHTS}
    return {"source": "file", "files": {n: {"file": str(p), "sha256": sha256_file(p)} for n, p in files.items()}}


def parameter_counts(num_classes: int = 1000) -> dict[str, int]:
    """Parameters of torchvision's AlexNet and VGG-19 with ``num_classes`` outputs (built on the meta device: no
    memory, nothing initialised or downloaded): ``{"alexnet": …, "vgg19": …}``."""
    import torchvision.models as tvm

    with torch.device("meta"):
        nets = {n: getattr(tvm, n)(weights=None, num_classes=num_classes) for n in TORCHVISION_WEIGHTS}
    return {n: sum(p.numel() for p in net.parameters()) for n, net in nets.items()}


class DCNN(DetectorNet):
    """AlexNet + VGG-19, fine-tuned, FC-6 features fused and classified by ProCRC (module docstring).

    ``input_size``: side the networks see (px); ``pretrained``: False, True (torchvision ImageNet) or a local
    folder; ``max_dictionary``: ProCRC dictionary cap per class; ``dictionary_size``: the fitted dictionary's size
    (0: not fitted; set by rebuilding a checkpoint, :meth:`spec`); ``procrc_lambda``/``procrc_gamma``: ProCRC's λ, γ;
    ``seed``: the dictionary subset's seed. Raises ValueError for sizes below 1 (``input_size``,
    ``max_dictionary``) or a negative ``dictionary_size``.
    """

    def __init__(self, input_size: int = INPUT_SIZE, pretrained: bool | str = False,
                 max_dictionary: int = MAX_DICTIONARY, dictionary_size: int = 0,
                 procrc_lambda: float = PROCRC_LAMBDA, procrc_gamma: float = PROCRC_GAMMA, seed: int = 0):
        super().__init__()
        if input_size < 1 or max_dictionary < 1 or dictionary_size < 0:
            raise ValueError(f"DCNN needs input_size >= 1, max_dictionary >= 1, dictionary_size >= 0; got "
                             f"{input_size}, {max_dictionary}, {dictionary_size}")
        self.input_size = int(input_size)
        self.max_dictionary = int(max_dictionary)
        self.procrc_lambda = float(procrc_lambda)
        self.procrc_gamma = float(procrc_gamma)
        self.seed = int(seed)
        alexnet, vgg19 = _torchvision_net("alexnet", pretrained), _torchvision_net("vgg19", pretrained)
        # AlexNet: avgpool → [Dropout, FC-6, ReLU] | [Dropout, FC-7, ReLU, FC-8]
        self.alexnet_body = nn.Sequential(alexnet.features, alexnet.avgpool, nn.Flatten(1))
        self.alexnet_fc6 = nn.Sequential(*alexnet.classifier[:3])
        self.alexnet_head = nn.Sequential(*alexnet.classifier[3:6], nn.Linear(FC6_WIDTH, NUM_CLASSES))
        # VGG-19: avgpool → [FC-6, ReLU] | [Dropout, FC-7, ReLU, Dropout, FC-8]
        self.vgg19_body = nn.Sequential(vgg19.features, vgg19.avgpool, nn.Flatten(1))
        self.vgg19_fc6 = nn.Sequential(*vgg19.classifier[:2])
        self.vgg19_head = nn.Sequential(*vgg19.classifier[2:6], nn.Linear(FC6_WIDTH, NUM_CLASSES))
        n = int(dictionary_size)
        self.register_buffer("dictionary", torch.zeros(n, FEATURE_DIM))
        self.register_buffer("dictionary_labels", torch.zeros(n, dtype=torch.long))
        self.register_buffer("projection", torch.zeros(n, FEATURE_DIM))

    @property
    def classifier_fitted(self) -> bool:
        """Whether ProCRC has a dictionary (fitted here or loaded from a checkpoint)."""
        return self.dictionary.shape[0] > 0

    def spec(self) -> dict[str, Any]:
        """The registry entry that rebuilds this network with its current dictionary size (:mod:`emdlib.registry`)."""
        return {"name": "dcnn", "kwargs": {"input_size": self.input_size, "max_dictionary": self.max_dictionary,
                                           "dictionary_size": int(self.dictionary.shape[0]),
                                           "procrc_lambda": self.procrc_lambda, "procrc_gamma": self.procrc_gamma,
                                           "seed": self.seed}}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a state with a fitted classifier loads into a model built with another dictionary size (e.g. the study
        # resuming a run whose best checkpoint already holds it); the registry checks sizes against the spec first
        for name in ("dictionary", "dictionary_labels", "projection"):
            incoming, own = state_dict.get(prefix + name), getattr(self, name)
            if incoming is not None and incoming.shape != own.shape and incoming.shape[1:] == own.shape[1:]:
                setattr(self, name, torch.zeros(incoming.shape, dtype=own.dtype, device=own.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def network_input(self, image: torch.Tensor) -> torch.Tensor:
        """Shared ``(x - 0.5) / 0.5`` RGB ``(N, 3, S, S)`` → ``(N, 3, input_size, input_size)`` ImageNet-normalised."""
        x = inputs.resize(inputs.to_rgb01(image), self.input_size)
        mean = x.new_tensor(inputs.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(inputs.IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def _fc6(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.network_input(image)
        return self.alexnet_fc6(self.alexnet_body(x)), self.vgg19_fc6(self.vgg19_body(x))

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Fused FC-6 features ``(N, 8192)``, L2-normalised per sample (AlexNet's 4096 first, then VGG-19's)."""
        a, v = self._fc6(image)
        return F.normalize(torch.cat([a, v], dim=1).float(), dim=1)

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        a, v = self._fc6(image)
        logits_a, logits_v = self.alexnet_head(a), self.vgg19_head(v)
        extras = {"alexnet_logits": logits_a, "vgg19_logits": logits_v}
        if self.classifier_fitted:
            # ProCRC in float32 even under mixed precision: the class residuals differ by little
            with torch.autocast(image.device.type, enabled=False):
                feats = F.normalize(torch.cat([a, v], dim=1).float(), dim=1)
                residuals = procrc_residuals(feats, self.dictionary, self.dictionary_labels, self.projection,
                                             NUM_CLASSES)
            extras["procrc_residuals"] = residuals
            logits = procrc_log_prob(residuals)
        else:
            logits = 0.5 * (F.log_softmax(logits_a.float(), dim=1) + F.log_softmax(logits_v.float(), dim=1))
        return DetectorOutput(logits=logits, extras=extras)

    def compute_loss(self, output: DetectorOutput, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Fine-tuning loss: softmax cross-entropy of the AlexNet head plus that of the VGG-19 head."""
        label = batch["label"].long()
        la = F.cross_entropy(output.extras["alexnet_logits"].float(), label)
        lv = F.cross_entropy(output.extras["vgg19_logits"].float(), label)
        loss = la + lv
        return loss, {"loss": float(loss.detach()), "loss_alexnet": float(la.detach()),
                      "loss_vgg19": float(lv.detach())}

    @torch.no_grad()
    def fit_classifier(self, batches: Iterable[Mapping[str, Any]]) -> bool:
        """Fit ProCRC on the fused features of ``batches`` (the unaugmented training split; each a mapping with
        ``image`` ``(B, 3, S, S)`` and ``label`` ``(B,)``): a seeded uniform subset of at most ``max_dictionary``
        images per class (reservoir sampling per class, so the features of the whole split are never held), then
        :func:`emdlib.baselines.procrc.procrc_projection`. Replaces any earlier dictionary. Returns True.
        Raises ValueError when ``batches`` hold no image or only one class."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        gen = torch.Generator().manual_seed(self.seed)
        kept: dict[int, list[torch.Tensor]] = {}
        seen: dict[int, int] = {}
        for batch in tqdm(batches, desc="DCNN features for ProCRC", leave=False, disable=None):
            feats = self.features(batch["image"].to(device)).cpu()
            for f, y in zip(feats, batch["label"].tolist()):
                y = int(y)
                pool, i = kept.setdefault(y, []), seen.get(y, 0)
                if i < self.max_dictionary:
                    pool.append(f)
                else:  # Algorithm R: item i replaces a kept one with probability max / (i + 1)
                    j = int(torch.randint(0, i + 1, (1,), generator=gen))
                    if j < self.max_dictionary:
                        pool[j] = f
                seen[y] = i + 1
        self.train(was_training)
        if len(kept) < 2:
            raise ValueError(f"ProCRC needs training images of both classes, got classes {sorted(kept)}")
        labels = torch.cat([torch.full((len(kept[c]),), c, dtype=torch.long) for c in sorted(kept)])
        dictionary = torch.cat([torch.stack(kept[c]) for c in sorted(kept)])
        log.info("ProCRC dictionary: %s of %s training images per class",
                 {c: len(kept[c]) for c in sorted(kept)}, {c: seen[c] for c in sorted(seen)})
        projection = procrc_projection(dictionary.to(device), labels.to(device), NUM_CLASSES, self.procrc_lambda,
                                       self.procrc_gamma)
        self.dictionary = dictionary.to(device)
        self.dictionary_labels = labels.to(device)
        self.projection = projection.contiguous()  # as a checkpoint loads it back: the same matmul, bit for bit
        return True
