"""Local ImageNet weights (issue 13, deliverable 5): one loader for every timm network that starts from ImageNet."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from emdlib.pretrained import create_timm_model, describe_weights, read_weights_file

TINY = "test_resnet"  # timm's own tiny test network (has a classifier, so the head-dropping path is exercised)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _assert_loaded(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own and set(own) <= set(source)
    for k, v in own.items():
        assert torch.equal(v, source[k]), k


def test_safetensors_round_trips_into_the_emd_encoder(tmp_path):
    from emdlib.models.emd import create_encoder

    torch.manual_seed(5)
    src = _state(timm.create_model("xception41", pretrained=False))  # with its 1000-class head, as timm ships it
    path = tmp_path / "xception41.safetensors"
    save_file(src, str(path))
    encoder = create_encoder("xception41", pretrained=path)
    _assert_loaded(encoder, src)  # every encoder tensor (head dropped: num_classes=0)
    assert not any(k.startswith("head.fc") for k in encoder.state_dict())


def test_timm_checkpoint_and_plain_pth(tmp_path):
    torch.manual_seed(6)
    src = _state(timm.create_model(TINY, pretrained=False))
    ckpt = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": TINY, "state_dict": {f"module.{k}": v for k, v in src.items()}}, ckpt)
    _assert_loaded(create_timm_model(TINY, ckpt, num_classes=0), src)
    plain = tmp_path / f"{TINY}.pth"
    torch.save(src, plain)
    _assert_loaded(create_timm_model(TINY, plain), src)  # same number of classes: the head loads too
    assert torch.equal(create_timm_model(TINY, tmp_path).get_classifier().weight, src["fc.weight"])  # folder lookup


class _Payload:
    ran = False

    def __reduce__(self):
        return (_Payload._run, ())

    @staticmethod
    def _run():
        _Payload.ran = True
        return "ran"


def test_pth_with_a_pickle_payload_is_refused(tmp_path):
    src = _state(timm.create_model(TINY, pretrained=False))
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": src, "extra": _Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.pth: cannot be loaded with torch\.load\(weights_only=True\)"):
        create_timm_model(TINY, path)
    assert not _Payload.ran


def test_missing_file_and_wrong_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors: ImageNet weights file not found \(study "
                                                r"parameter imagenet_weights\)"):
        create_timm_model(TINY, tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match=rf"no ImageNet weights for timm model '{TINY}' in this folder "
                                                rf"\(looked for {TINY}\.safetensors, {TINY}\.pth"):
        create_timm_model(TINY, tmp_path)
    other = tmp_path / "other.safetensors"
    save_file(_state(timm.create_model("test_efficientnet", pretrained=False)), str(other))
    with pytest.raises(ValueError, match=rf"other\.safetensors: does not hold ImageNet weights for timm model '{TINY}'"):
        create_timm_model(TINY, other)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth: expected a non-empty state dict, found list"):
        read_weights_file(tmp_path / "list.pth")


def test_offline_without_a_file_says_how_to_give_one(monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("offline: cannot reach huggingface.co")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as e:
        create_timm_model(TINY, True)
    msg = str(e.value)
    assert msg.startswith(f"ImageNet weights for timm model '{TINY}' could not be downloaded (OSError: offline")
    assert f"`emd reproduce -p imagenet_weights /path/to/{TINY}.safetensors`" in msg and "pretrained=False" in msg


def test_study_parameter_reaches_the_preset_and_the_run_record(tmp_path):
    from emdlib.study import Study
    from emdlib.study.experiments import SYSTEMS, initial_weights

    path = tmp_path / "xception41.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    study = Study.open("tiny", tmp_path / "d", tmp_path / "r", imagenet_weights=path)
    assert study.preset.emd.pretrained == str(path) and study.parameters()["imagenet_weights"] == str(path)
    assert Study.open(**study.parameters()) == study
    got = initial_weights(study.preset, SYSTEMS["EMD"])
    assert got["source"] == "file" and got["model"] == "xception41" and got["file"] == str(path)
    assert len(got["sha256"]) == 64
    assert initial_weights(study.preset, SYSTEMS["MesoNet"]) == {"source": "random"}
    tiny = Study.open("tiny", tmp_path / "d", tmp_path / "r")
    assert tiny.parameters()["imagenet_weights"] is None
    assert describe_weights(tiny.preset.emd.pretrained, "xception41") == {"source": "random"}
    assert describe_weights(True, "xception65") == {"source": "timm", "model": "xception65"}


def test_another_networks_file_is_refused_even_without_a_classifier(tmp_path):
    # timm loads non-strictly when num_classes changes (EMD's encoder: num_classes=0): a file of another network
    # must not leave the model silently at random initialisation
    other = tmp_path / "other.safetensors"
    src = _state(timm.create_model(TINY, pretrained=False))
    save_file({f"backbone.{k}": v for k, v in src.items()}, str(other))  # no name in common with the model's
    n = sum(not k.endswith("num_batches_tracked") for k in create_timm_model(TINY, num_classes=0).state_dict())
    with pytest.raises(ValueError, match=rf"other\.safetensors: does not hold ImageNet weights for timm model "
                                         rf"'{TINY}' \({n} of its {n} tensors are not in the file, e\.g\. conv1"):
        create_timm_model(TINY, other, num_classes=0)


def test_reproduce_fetches_imagenet_weights_before_any_notebook(study, monkeypatch):
    import dataclasses

    from emdlib import check, pretrained
    from emdlib.reproduce import fetch_imagenet_weights

    tried = []

    def offline(name, weights=False, **kwargs):
        tried.append((name, weights))
        raise RuntimeError(f"ImageNet weights for timm model {name!r} could not be downloaded (offline)")

    monkeypatch.setattr(pretrained, "create_timm_model", offline)
    monkeypatch.setattr(check, "timm_weights_cached", lambda name: False)
    assert fetch_imagenet_weights(study, ["00", "01", "02"]) == []  # tiny starts from random weights
    on = dataclasses.replace(study, preset=dataclasses.replace(
        study.preset, emd=dataclasses.replace(study.preset.emd, pretrained=True)))
    assert fetch_imagenet_weights(on, ["00", "01"]) == []  # the data and FER stages need no ImageNet weights
    with pytest.raises(RuntimeError, match="could not be downloaded"):
        fetch_imagenet_weights(on, ["00", "02"])
    assert tried == [(on.preset.emd.encoder, True)]
    monkeypatch.setattr(check, "timm_weights_cached", lambda name: True)
    assert fetch_imagenet_weights(on, ["03"]) == []  # in the local cache: nothing to fetch


def test_reproduce_refuses_what_would_fail_hours_later(study, monkeypatch):
    import dataclasses

    from emdlib.reproduce import preflight
    from emdlib.study.experiments import NPROC_ENV

    def with_emd(**changes):
        return dataclasses.replace(study, preset=dataclasses.replace(
            study.preset, emd=dataclasses.replace(study.preset.emd, **changes)))

    deepfakes = with_emd(cells=(("Deepfakes", "c23"),))
    preflight(deepfakes, ["00", "01", "03", "05", "07"])  # nothing selected needs an expression cell
    with pytest.raises(ValueError, match=r"no Face2Face/NeuralTextures c23 cell.*notebooks 02, 04, 06.*--only"):
        preflight(deepfakes, ["00", "02", "04", "06"])
    monkeypatch.setenv(NPROC_ENV, "2")
    synced = dataclasses.replace(with_emd(sync_bn=True), device="cpu")
    with pytest.raises(ValueError, match="emd.sync_bn with 2 processes on the CPU.*--set emd.sync_bn=false"):
        preflight(synced, ["02"])
    preflight(synced, ["00", "01"])  # the data and FER stages train no detector
    monkeypatch.setenv(NPROC_ENV, "1")
    preflight(synced, ["02"])  # one process: SyncBatchNorm is never built
