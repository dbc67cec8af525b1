"""emdlib.registry: one checkpoint-spec format, and what a checkpoint sidecar may ask for is checked before anything
is built (unknown arguments, wrong types, nested FER streams, ``pretrained`` never honoured from a file)."""

from __future__ import annotations

import json

import pytest
import torch

from emdlib.checkpoint import save_checkpoint
from emdlib.registry import MODELS, build_from_spec, build_model, check_spec, model_from_checkpoint, model_spec

torch.set_num_threads(1)


def write(tmp_path, state, spec, name="m.safetensors"):
    path = tmp_path / name
    save_checkpoint(path, state, {"model": spec, "image_size": 64})
    return path


def test_every_registered_model_builds_and_round_trips_through_a_checkpoint(tmp_path):
    small = {"emd": {"encoder": "xception41"}, "multitask_ensfer": {"fer": {"name": "esr", "kwargs": {"num_branches": 1}},
                                                                     "input_size": 64}}
    for name in MODELS:
        torch.manual_seed(0)
        spec = model_spec(name, **small.get(name, {}))
        model = build_from_spec(spec, "test")
        path = write(tmp_path, model.state_dict(), spec, f"{name}.safetensors")
        rebuilt, meta = model_from_checkpoint(path)
        assert meta["model"] == spec and type(rebuilt) is type(model), name
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in rebuilt.state_dict().items()), name


def test_an_unknown_constructor_argument_is_refused_naming_the_file_and_the_key(tmp_path):
    path = write(tmp_path, {}, {"name": "mesonet", "kwargs": {"input_size": 64, "evil": 1}})
    with pytest.raises(ValueError, match=r"m\.safetensors: 'model\.kwargs\.evil' is not an argument model 'mesonet'"):
        model_from_checkpoint(path)


@pytest.mark.parametrize("key, value, why", [
    ("input_size", "64", "expected int, got str"),
    ("input_size", True, "expected int, got bool"),
    ("input_size", 64.0, "expected int, got float"),
    ("bn_momentum", [0.1], "expected float, got list"),
    ("input_size", None, "null is not allowed"),
])
def test_a_wrongly_typed_value_is_refused(tmp_path, key, value, why):
    path = write(tmp_path, {}, {"name": "mesonet", "kwargs": {key: value}})
    with pytest.raises(ValueError, match=rf"m\.safetensors: 'model\.kwargs\.{key}': {why}"):
        model_from_checkpoint(path)
    assert check_spec({"name": "mesonet", "kwargs": {"bn_momentum": 1}})["kwargs"] == {"bn_momentum": 1}  # int as float


def test_pretrained_is_never_honoured_from_a_file(tmp_path, monkeypatch):
    path = write(tmp_path, {}, {"name": "xception", "kwargs": {"pretrained": True}})
    with pytest.raises(ValueError, match=r"m\.safetensors: 'model\.kwargs\.pretrained' = True is not honoured"):
        model_from_checkpoint(path)
    # "pretrained": false (written by earlier runs) is accepted, and rebuilding never asks timm for weights
    import timm

    asked = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: asked.append(k.get("pretrained")) or real(*a, **k))
    spec = check_spec({"name": "xception", "kwargs": {"pretrained": False, "num_classes": 2}}, path)
    assert spec == {"name": "xception", "kwargs": {"num_classes": 2}}
    build_from_spec(spec, path)
    build_from_spec({"name": "emd", "kwargs": {"encoder": "xception41"}}, path)
    assert asked == [False, False]


def test_nested_fer_specs_are_checked_too(tmp_path):
    bad_kwarg = {"name": "emd", "kwargs": {"encoder": "xception41",
                                           "fer": {"name": "esr", "kwargs": {"num_branches": 2, "path": "/x"}}}}
    with pytest.raises(ValueError, match=r"'model\.kwargs\.fer\.kwargs\.path' is not an argument model 'esr'"):
        model_from_checkpoint(write(tmp_path, {}, bad_kwarg))
    not_fer = {"name": "emd", "kwargs": {"fer": {"name": "mesonet", "kwargs": {}}}}
    with pytest.raises(ValueError, match=r"model 'fer' must be a FER stream .* got 'mesonet'"):
        model_from_checkpoint(write(tmp_path, {}, not_fer))
    old_format = {"name": "emd", "kwargs": {"fer": {"kind": "ESR", "num_branches": 2}}}
    with pytest.raises(ValueError, match=r"no 'model\.kwargs\.fer' entry"):
        model_from_checkpoint(write(tmp_path, {}, old_format))


@pytest.mark.parametrize("spec, match", [
    (None, "sidecar has no 'model' entry"),
    ({"kind": "ESR", "num_branches": 2}, "sidecar has no 'model' entry"),
    ({"name": "os.system", "kwargs": {}}, "unknown model 'os.system'"),
    ({"name": "esr", "kwargs": {}, "target": "builtins:eval"}, r"unknown entries \['target'\]"),
    ({"name": "esr", "kwargs": [2]}, "must be a JSON object"),
])
def test_malformed_specs_are_refused_naming_the_file(tmp_path, spec, match):
    path = write(tmp_path, {}, spec)
    with pytest.raises(ValueError, match=rf"m\.safetensors: .*{match}"):
        model_from_checkpoint(path)


def test_a_constructor_that_rejects_a_well_typed_value_is_reported_as_the_files_fault(tmp_path):
    path = write(tmp_path, {}, {"name": "mesonet", "kwargs": {"input_size": 50}})  # not a multiple of 32
    with pytest.raises(ValueError, match=r"m\.safetensors: model 'mesonet' cannot be built .*multiple of 32"):
        model_from_checkpoint(path)


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path):
    state = build_model("esr", num_branches=1).state_dict()
    with pytest.raises(ValueError, match=r"m\.safetensors: weights do not match model 'esr' \(missing \['branches\.1"):
        model_from_checkpoint(write(tmp_path, state, model_spec("esr", num_branches=2)))


def test_code_may_pass_a_built_fer_stream_and_pretrained_but_model_spec_records_neither(tmp_path):
    esr = build_model("esr", num_branches=1)
    emd = build_model("emd", fer=esr, encoder="xception41", pretrained=False)
    assert emd.fer is esr
    spec = model_spec("emd", fer=esr, encoder="xception41", pretrained=True)
    assert spec == {"name": "emd", "kwargs": {"encoder": "xception41",
                                              "fer": {"name": "esr", "kwargs": {"num_branches": 1, "num_classes": 8}}}}
    assert json.loads(json.dumps(spec)) == spec  # plain JSON, as sidecars store it
    with pytest.raises(ValueError, match="takes no FER stream"):
        build_model("mesonet", fer=esr)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("mesonet", pretrained=True)

