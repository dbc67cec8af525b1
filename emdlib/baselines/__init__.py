"""The baseline systems of the EMD paper's Tables II–IV (reference-facts §D, §B.5), one module a system.

``BASELINES`` maps a name to a constructor that takes no required argument. The neural baselines follow the
model contract of the training loop: ``model(image, fer_image=None) -> {"logits": (N, 2) index 1 = fake,
"mask_logits": (N, 1, H, W) or None, ...}``, with ``compute_loss(output, batch)`` where their loss differs from
Eq. 8, ``warmup_parameters()`` where they have a warm-up, and ``after_step()`` (Bayar & Stamm's constraint
projection) to be called after every optimiser step. ``steg_features_svm`` is a scikit-learn Pipeline instead.

=====================  ==========================================  =========================================
name                   system (paper row)                          module
=====================  ==========================================  =========================================
steg_features_svm      Steg. Features + SVM                        :mod:`.steganalysis`
cozzolino              Cozzolino et al.                            :mod:`.cozzolino`
bayar_stamm            Bayar and Stamm                             :mod:`.bayar`
rahmouni               Rahmouni et al. (Stats-2L)                  :mod:`.rahmouni`
mesonet                MesoNet (MesoInception-4)                   :mod:`.mesonet`
meso4                  MesoNet's Meso-4 variant                    :mod:`.mesonet`
xception               XceptionNet (FF++)                          :mod:`.xception`
multitask              MultiTask (ClassNSeg)                       :mod:`.classnseg`
multitask_ensfer       MultiTask+EnsFER                            :mod:`.classnseg`
dcnn                   DCNN (Raghavendra et al., Table III)        :mod:`.dcnn` (ProCRC: :mod:`.procrc`)
capsule_forensics      Capsule-Forensics (v1; Table III)           :mod:`.capsule_forensics`
lae                    LAE (Du et al., CIKM 2020; Table III)       :mod:`.lae`
face_xray              Face X-ray (Table III)                      :mod:`.face_xray` (blended faces: :mod:`emdlib.data.blending`)
forensic_transfer      FT-res (ForensicTransfer, residual input)   :mod:`.forensic_transfer`
two_stream             Two-stream (Zhou et al.; Table III)         :mod:`.two_stream` (:mod:`.patch_triplet`)
=====================  ==========================================  =========================================

Constructors import their module on first use, so ``import emdlib.baselines`` stays light (no timm/sklearn).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

_REGISTRY = {
    "steg_features_svm": ("steganalysis", "steg_svm_pipeline"),
    "cozzolino": ("cozzolino", "Cozzolino"),
    "bayar_stamm": ("bayar", "BayarStamm"),
    "rahmouni": ("rahmouni", "Rahmouni"),
    "mesonet": ("mesonet", "MesoInception4"),
    "meso4": ("mesonet", "Meso4"),
    "xception": ("xception", "XceptionNet"),
    "multitask": ("classnseg", "MultiTask"),
    "multitask_ensfer": ("classnseg", "MultiTaskEnsFER"),
    "dcnn": ("dcnn", "DCNN"),
    "capsule_forensics": ("capsule_forensics", "CapsuleForensics"),
    "lae": ("lae", "LAE"),
    "face_xray": ("face_xray", "FaceXray"),
    "forensic_transfer": ("forensic_transfer", "ForensicTransfer"),
    "two_stream": ("two_stream", "TwoStream"),
}


def _constructor(module: str, attr: str) -> Callable[..., Any]:
    def build(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)(*args, **kwargs)

    build.__name__ = attr
    build.__qualname__ = attr
    build.__doc__ = f"Build :func:`emdlib.baselines.{module}.{attr}` (imported on first use)."
    return build


BASELINES: dict[str, Callable[..., Any]] = {name: _constructor(*target) for name, target in _REGISTRY.items()}


def build_baseline(name: str, **kwargs: Any) -> Any:
    """``BASELINES[name](**kwargs)`` with a clear error for unknown names."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return BASELINES[name](**kwargs)
