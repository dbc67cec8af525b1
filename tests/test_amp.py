"""Every trainable system under bfloat16 autocast, as the training loop and ``predict`` run them on a GPU
(``emdlib.train._amp_dtype``: bf16 where the device supports it). CI has no GPU; the CPU's bf16 autocast casts the
same op classes (convolutions, matrix products) and so catches what would break there first: dtype mismatches in a
system's own loss, a fitted classifier (DCNN's ProCRC, Two-stream's SVM) read in the wrong precision, a
non-finite loss or probability."""

from __future__ import annotations

import pytest
import torch

from emdlib.registry import build_model
from emdlib.train import make_optimizer, train_step

torch.set_num_threads(1)

SIZE = 64
#: Each system at a small input (its constructor's size argument) — the architectures are the real ones.
SMALL = {"emd": {"encoder": "xception41", "fer": {"name": "esr", "kwargs": {"num_branches": 2}}},
         "xception": {}, "multitask": {"input_size": SIZE},
         "multitask_ensfer": {"fer": {"name": "esr", "kwargs": {"num_branches": 1}}, "input_size": SIZE},
         "mesonet": {"input_size": SIZE}, "bayar_stamm": {"input_size": SIZE}, "rahmouni": {}, "cozzolino": {},
         "capsule_forensics": {"input_size": SIZE}, "dcnn": {"input_size": SIZE, "max_dictionary": 8},
         "forensic_transfer": {"input_size": SIZE}, "lae": {"input_size": SIZE},
         "face_xray": {"backbone": "hrnet_w18_small", "input_size": SIZE}, "two_stream": {"input_size": 75}}


def batch(n: int = 4) -> dict:
    """Two real and two fake faces in the shared input, with masks, ids and FER crops, as the loaders give."""
    mask = torch.zeros(n, 1, SIZE, SIZE)
    mask[1::2, :, 16:48, 16:48] = 1
    return {"image": torch.rand(n, 3, SIZE, SIZE) * 2 - 1, "fer_image": torch.rand(n, 3, 96, 96), "mask": mask,
            "label": torch.tensor([0, 1] * (n // 2)), "video": [f"v{i}" for i in range(n)],
            "frame": torch.arange(n), "method": ["original", "Face2Face"] * (n // 2), "compression": ["c23"] * n}


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_a_bf16_autocast_step_and_prediction_are_finite(kind):
    torch.manual_seed(0)
    model = build_model(kind, **SMALL[kind])
    optimizer = make_optimizer(model.trainable_parameters(), "adam", lr=1e-4)
    model.train()
    parts = train_step(model, batch(), optimizer, amp_dtype=torch.bfloat16)  # raises on a non-finite loss
    assert parts["loss"] > 0
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fitted = model.fit_classifier([batch(), batch()])  # DCNN, Two-stream: True; the others: nothing to fit
    assert fitted == (kind in ("dcnn", "two_stream"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch()["image"], batch()["fer_image"])
    assert out.logits.shape == (4, 2) and out.prob.dtype == torch.float32 and torch.isfinite(out.prob).all()
    if out.mask_logits is not None:
        assert torch.isfinite(out.mask_prob).all()
