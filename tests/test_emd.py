"""EMD architecture (paper §III-D, reference-facts §C): shapes, FER injection, frozen FER stream, weights handling."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from emdlib.models.emd import EMD, LastConv, create_encoder

torch.set_num_threads(1)


def _esr():
    esr = pytest.importorskip("emdlib.models.esr")
    return esr.ESR(num_branches=2)


class _Capture:
    """Forward hook recording the input shape of a module."""

    def __init__(self, module: nn.Module):
        self.shapes = []
        module.register_forward_hook(lambda m, inp, out: self.shapes.append(tuple(inp[0].shape)))


@pytest.mark.parametrize("size, grid", [(256, 16), (128, 8)])
def test_shapes_and_fer_on_encoder_grid_xception41(size, grid):
    model = EMD(_esr(), encoder="xception41").eval()
    cap = _Capture(model.last_conv.conv)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size), torch.rand(2, 3, 96, 96))
    assert out.logits.shape == (2, 2)
    assert out.mask_logits.shape == (2, 1, size, size)
    assert out.extras["fer_branch"].shape == (2,) and out.extras["fer_class"].shape == (2,)
    # the concatenated input of the rebuilt last conv: 1536 encoder + 512 FER channels on the OS16 grid
    assert cap.shapes == [(2, 1536 + 512, grid, grid)]
    assert model.encoder_grid(size) == (grid, grid)


def test_shapes_at_299_xception65():
    model = EMD(_esr(), encoder="xception65").eval()
    cap = _Capture(model.last_conv.conv)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 299, 299))  # fer_image derived from the image (96×96 BGR)
    assert out.mask_logits.shape == (1, 1, 299, 299) and out.logits.shape == (1, 2)
    assert cap.shapes == [(1, 2048, 19, 19)]  # 19×19 at OS16 (reference-facts §A.9)
    assert len(model.encoder.blocks) == 21  # xception65: 3 entry + 16 middle + 2 exit blocks


def test_rebuilt_last_conv_width_and_init():
    with_fer = EMD(_esr(), encoder="xception41")
    assert isinstance(with_fer.last_conv, LastConv)
    assert with_fer.last_conv.conv.in_channels == 1536 + 512 and with_fer.last_conv.conv.out_channels == 2048
    assert [m.kernel_size for m in [with_fer.last_conv.conv]] == [(1, 1)]
    # the encoder now stops before its last (pointwise) conv
    last_sep = with_fer.encoder.blocks[-1].stack[-1]
    assert isinstance(last_sep.conv_pw, nn.Identity) and isinstance(last_sep.bn_pw, nn.Identity)
    # without FER (XceptionNet row) the last conv keeps the encoder's own weights
    torch.manual_seed(0)
    reference = timm.create_model("xception41", pretrained=False, num_classes=0, output_stride=16)
    torch.manual_seed(0)
    plain = EMD(None, encoder="xception41")
    assert plain.last_conv.conv.in_channels == 1536
    ref_pw = reference.blocks[-1].stack[-1].conv_pw.weight
    assert torch.equal(plain.last_conv.conv.weight, ref_pw)
    out = plain.eval()(torch.randn(1, 3, 64, 64))
    assert out.mask_logits.shape == (1, 1, 64, 64) and "fer_branch" not in out.extras


def test_plain_model_matches_the_uncut_encoder():
    """Cutting the encoder and re-attaching its own last conv outside changes nothing (fer=None)."""
    torch.manual_seed(1)
    reference = timm.create_model("xception41", pretrained=False, num_classes=0, output_stride=16).eval()
    torch.manual_seed(1)
    plain = EMD(None, encoder="xception41").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = reference.forward_features(x)
        low, feat = plain.encoder.forward_intermediates(x, indices=[1, 4], intermediates_only=True)
        assert torch.allclose(plain.last_conv(feat), ref, atol=1e-5)


def test_fer_stream_frozen_and_in_eval_mode():
    fer = _esr()
    model = EMD(fer, encoder="xception41")
    model.train()
    assert model.training and not model.fer.training
    assert all(not m.training for m in model.fer.modules())
    assert all(not p.requires_grad for p in model.fer.parameters())
    fer_ids = {id(p) for p in model.fer.parameters()}
    assert not any(id(p) in fer_ids for p in model.trainable_parameters())
    warm = {id(p) for p in model.warmup_parameters()}
    expected = {id(p) for m in (model.last_conv, model.aspp, model.decoder, model.fc) for p in m.parameters()}
    assert warm == expected
    # BN running statistics of the FER stream do not move in a training-mode forward
    before = {k: v.clone() for k, v in model.fer.state_dict().items()}
    model(torch.randn(2, 3, 64, 64), torch.rand(2, 3, 96, 96))
    assert all(torch.equal(before[k], v) for k, v in model.fer.state_dict().items())


def test_pretrained_offline_gives_clear_error(monkeypatch, tmp_path):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise LocalEntryNotFoundError("cannot reach the hub")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="could not be downloaded.*pretrained=False"):
        create_encoder("xception41", pretrained=True)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_encoder("xception41", pretrained=tmp_path / "nope.safetensors")


def test_pretrained_from_local_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = timm.create_model("xception41", pretrained=False)
    path = tmp_path / "xception41.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    enc = create_encoder("xception41", pretrained=path)
    assert torch.equal(enc.stem[0].conv.weight, src.stem[0].conv.weight)


def test_checkpoint_rebuilds_emd_with_its_fer_stream(tmp_path):
    from emdlib.checkpoint import save_checkpoint
    from emdlib.registry import model_from_checkpoint

    torch.manual_seed(0)
    model = EMD(_esr(), encoder="xception41").eval()
    assert model.spec()["kwargs"]["fer"] == {"name": "esr", "kwargs": {"num_branches": 2, "num_classes": 8}}
    path = tmp_path / "emd.safetensors"
    save_checkpoint(path, model.state_dict(), {"model": model.spec(), "image_size": 64})
    rebuilt, meta = model_from_checkpoint(path)
    assert meta["model"]["name"] == "emd" and rebuilt.fer is not None and not rebuilt.fer.training
    x, f = torch.randn(2, 3, 64, 64), torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        a, b = model(x, f), rebuilt(x, f)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.mask_logits, b.mask_logits)


def test_checkpoints_with_a_simfer_stream_rebuild(tmp_path):
    # regression: XceptionNet+SimFER checkpoints failed on SimFER(num_branches=...)
    from emdlib.checkpoint import save_checkpoint
    from emdlib.models.simfer import SimFER
    from emdlib.registry import model_from_checkpoint, save_fer_stream

    torch.manual_seed(0)
    simfer = SimFER()
    model = EMD(simfer, encoder="xception41").eval()
    save_checkpoint(tmp_path / "emd.safetensors", model.state_dict(), {"model": model.spec(), "image_size": 64})
    rebuilt, _ = model_from_checkpoint(tmp_path / "emd.safetensors")
    assert type(rebuilt.fer).__name__ == "SimFER"
    save_fer_stream(tmp_path / "fer.safetensors", simfer)
    alone, _ = model_from_checkpoint(tmp_path / "fer.safetensors")
    assert all(torch.equal(v, simfer.state_dict()[k]) for k, v in alone.state_dict().items())
    with pytest.raises(ValueError, match="one branch"):
        SimFER(num_branches=2)
