"""The official MesoNet (.h5) and ClassNSeg (.pt) weights load into our ports with every tensor used, and score
the sample images in ../shared/data as their authors' models do (reference-facts §D.5, §D.6)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from emdlib.baselines.classnseg import MultiTask, MultiTaskEnsFER, load_classnseg
from emdlib.baselines.mesonet import Meso4, MesoInception4, load_mesonet_h5
from emdlib.checkpoint import load_torch_state_dict
from conftest import shared_path
from test_baselines import StandInESR

MESONET = [("Meso4_DF", Meso4), ("MesoInception_DF", MesoInception4), ("Meso4_F2F", Meso4),
           ("MesoInception_F2F", MesoInception4)]
CLASSNSEG = [("full", 46), ("finetune", 26)]


def mesonet_samples() -> tuple[torch.Tensor, np.ndarray]:
    """Official preprocessing: Keras' default nearest resize to 256×256, /255; then our shared input convention."""
    root = shared_path("data", "mesonet-samples")
    files = sorted(root.glob("df/*.jpg")) + sorted(root.glob("real/*.jpg"))
    assert files, f"{root}: no samples"
    images = []
    for f in files:
        im = Image.open(f).convert("RGB").resize((256, 256), Image.NEAREST)
        images.append(torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255.0)
    labels = np.array([1 if f.parent.name == "df" else 0 for f in files])
    return (torch.stack(images) - 0.5) / 0.5, labels


@pytest.mark.parametrize("name, ctor", MESONET)
def test_mesonet_h5_loads_every_tensor(name, ctor):
    path = shared_path("weights", "mesonet", f"{name}.h5")
    model = load_mesonet_h5(ctor(), path)  # raises on any unused / missing / misshapen tensor
    with h5py.File(path, "r") as f:
        n_file = []
        f.visititems(lambda n, o: n_file.append(o.size) if isinstance(o, h5py.Dataset) else None)
    n_model = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for k, b in model.named_buffers() if not k.endswith("num_batches_tracked"))
    assert sum(n_file) == n_model
    # the released Meso-4 graphs have no LeakyReLU layer, the MesoInception ones do
    assert model.head_activation == name.startswith("MesoInception")


@pytest.mark.parametrize("name, wrong", [("Meso4_DF", MesoInception4), ("MesoInception_DF", Meso4)])
def test_mesonet_h5_wrong_variant_is_a_clear_error(name, wrong):
    path = shared_path("weights", "mesonet", f"{name}.h5")
    with pytest.raises(ValueError, match=name):
        load_mesonet_h5(wrong(), path)
    with pytest.raises(ValueError, match="256-px input"):
        load_mesonet_h5(Meso4(input_size=64), shared_path("weights", "mesonet", "Meso4_DF.h5"))


@pytest.mark.parametrize("name, ctor", MESONET[:2])
def test_mesonet_df_scores_df_samples_as_more_fake(name, ctor):
    model = load_mesonet_h5(ctor(), shared_path("weights", "mesonet", f"{name}.h5")).eval()
    images, labels = mesonet_samples()
    with torch.no_grad():
        out = model(images)
    p_fake = out.logits.softmax(1)[:, 1].numpy()
    np.testing.assert_allclose(p_fake, 1 - out.extras["official_output"].numpy(), atol=1e-6)
    assert p_fake[labels == 1].min() > p_fake[labels == 0].max(), p_fake
    assert (p_fake[labels == 1] > 0.5).all() and (p_fake[labels == 0] < 0.5).all(), p_fake


def test_mesoinception_conv_order_matters():
    """Loading the two equally shaped 3×3 convs of branches b and c swapped (the file's listed order pitfall)
    changes the output: the creation-order mapping is not a no-op."""
    path = shared_path("weights", "mesonet", "MesoInception_DF.h5")
    model = load_mesonet_h5(MesoInception4(), path).eval()
    images, _ = mesonet_samples()
    with torch.no_grad():
        ref = model(images).extras["official_output"]
        inc = model.features[0]
        b3, c3 = inc.b3.weight.clone(), inc.c3.weight.clone()
        inc.b3.weight.copy_(c3)
        inc.c3.weight.copy_(b3)
        swapped = model(images).extras["official_output"]
    assert (ref - swapped).abs().max() > 1e-3


def classnseg_sample(name: str) -> tuple[torch.Tensor, np.ndarray]:
    """512×256 JPEG: left the 256×256 face, right its mask (channel 0 ≥ 0.5). No resize (official test)."""
    a = np.array(Image.open(shared_path("data", "classnseg-samples", f"{name}.jpg")).convert("RGB"))
    assert a.shape == (256, 512, 3)
    face = torch.from_numpy(a[:, :256].copy()).permute(2, 0, 1).float()[None] / 255.0
    return (face - 0.5) / 0.5, a[:, 256:, 0] / 255.0 >= 0.5


@pytest.mark.parametrize("folder, epoch", CLASSNSEG)
def test_classnseg_loads_and_scores_samples(folder, epoch):
    root = shared_path("weights", "classnseg", folder)
    enc, dec = root / f"encoder_{epoch}.pt", root / f"decoder_{epoch}.pt"
    model = load_classnseg(MultiTask(), enc, dec).eval()
    sd = {**{f"encoder.{k}": v for k, v in load_torch_state_dict(enc).items()},
          **{f"decoder.{k}": v for k, v in load_torch_state_dict(dec).items()}}
    ours = model.state_dict()
    assert set(sd) == set(ours)  # every tensor of both files used, every model tensor set
    assert all(torch.equal(sd[k], ours[k]) for k in sd)

    fake, gt = classnseg_sample("fake")
    real, gt_real = classnseg_sample("real")
    with torch.no_grad():
        out = model(torch.cat([fake, real]))
    p_fake = out.logits.softmax(1)[:, 1]
    assert p_fake[0] > 0.5 > p_fake[1], p_fake
    assert out.mask_logits.shape == (2, 1, 256, 256)

    pred = (out.mask_logits[0, 0] > 0).numpy()
    assert 0.1 < gt.mean() < 0.9
    chance_iou = (pred.mean() * gt.mean()) / (pred.mean() + gt.mean() - pred.mean() * gt.mean())
    iou = (pred & gt).sum() / (pred | gt).sum()
    assert iou > 0.6 > chance_iou, (iou, chance_iou)
    assert (pred == gt).mean() > max(gt.mean(), 1 - gt.mean()) + 0.15  # beats the constant mask
    assert not gt_real.any() and (out.mask_logits[1] < 0).float().mean() > 0.95


def test_classnseg_missing_file_is_a_clear_error(tmp_path):
    enc = shared_path("weights", "classnseg", "full", "encoder_46.pt")
    with pytest.raises(FileNotFoundError, match="decoder_99.pt"):
        load_classnseg(MultiTask(), enc, tmp_path / "decoder_99.pt")
    with pytest.raises(ValueError, match="encoder_46.pt"):  # encoder weights are no decoder
        load_classnseg(MultiTask(), enc, enc)


def test_multitask_ensfer_from_official_multitask():
    """Official MultiTask weights in MultiTask+EnsFER: before fine-tuning it classifies the samples the same."""
    root = shared_path("weights", "classnseg", "full")
    base = load_classnseg(MultiTask(), root / "encoder_46.pt", root / "decoder_46.pt").eval()
    ens = load_classnseg(MultiTaskEnsFER(fer=StandInESR()), root / "encoder_46.pt", root / "decoder_46.pt").eval()
    fake, _ = classnseg_sample("fake")
    with torch.no_grad():
        a = base(fake)
        b = ens(fake, torch.rand(1, 3, 96, 96))
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.mask_logits, b.mask_logits)
