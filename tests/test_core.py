"""Shared utilities: atomic writes, checkpoints, video round trips, the FF++ crop box, presets, the runner."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from emdlib.checkpoint import load_checkpoint, load_torch_state_dict, save_checkpoint, sidecar_path
from emdlib.data.faces import Box, crop_box
from emdlib.data.transforms import esr_input, to_tensor, xception_input
from emdlib.data.video import VideoError, count_frames, read_frames, write_video
from emdlib.io import atomic_path, read_json, write_json
from emdlib.presets import PRESETS, get_preset


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": np.float32(1.5), "b": (1, 2)})
    assert read_json(target) == {"a": 1.5, "b": [1, 2]}


def test_read_json_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    digest = save_checkpoint(tmp_path / "m.safetensors", sd, {"config": {"x": 1}})
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert torch.equal(loaded["w"], sd["w"]) and torch.equal(loaded["b"], sd["b"])
    assert meta["config"] == {"x": 1} and meta["sha256"] == digest
    assert sidecar_path(tmp_path / "m.safetensors").name == "m.json"
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")


class Evil:
    """An arbitrary pickled object: weights_only loading must refuse it."""


def test_third_party_pt_loads_weights_only(tmp_path: Path) -> None:
    sd = {"conv.weight": torch.ones(2, 2)}
    torch.save(sd, tmp_path / "ok.pt")
    assert torch.equal(load_torch_state_dict(tmp_path / "ok.pt")["conv.weight"], sd["conv.weight"])

    torch.save({"obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_torch_state_dict(tmp_path / "evil.pt")


def test_video_round_trip_and_lossless_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(6)]
    write_video(tmp_path / "v.mp4", frames, crf=23)
    assert count_frames(tmp_path / "v.mp4") == 6
    got = read_frames(tmp_path / "v.mp4", [0, 5])
    assert sorted(got) == [0, 5] and got[5].shape == (48, 64, 3)
    assert abs(int(got[5].mean()) - 100) <= 3  # lossy but close
    masks = [((rng.random((48, 64)) > 0.5) * 255).astype(np.uint8) for _ in range(3)]
    write_video(tmp_path / "m.mp4", [np.repeat(m[..., None], 3, 2) for m in masks], lossless=True)
    back = read_frames(tmp_path / "m.mp4")
    assert all(np.array_equal(back[i][..., 0], masks[i]) for i in range(3))


def test_bad_videos_raise_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4.*0 bytes"):
        count_frames(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("hello, not a video")
    with pytest.raises(VideoError, match="text.mp4"):
        read_frames(tmp_path / "text.mp4")
    with pytest.raises(VideoError, match="nope.mp4"):
        count_frames(tmp_path / "nope.mp4")
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", [np.zeros((5, 6, 3), np.uint8)])


def test_crop_box_is_ffpp_get_boundingbox() -> None:
    # 100x80 detection centred at (150, 140): side int(100 * 1.3) = 130, top-left (150-65, 140-65)
    assert crop_box((100, 100, 200, 180), (480, 640)) == Box(85, 75, 130)
    # near the top-left corner: clipped to 0, side kept
    assert crop_box((0, 0, 50, 50), (480, 640)) == Box(0, 0, 65)
    # near the bottom-right: side 65, centre (615, 455) → top-left (583, 423), shrunk to 57 to fit the frame
    assert crop_box((590, 430, 640, 480), (480, 640)) == Box(583, 423, 57)
    img = np.arange(480 * 640 * 3, dtype=np.uint32).reshape(480, 640, 3)
    assert Box(85, 75, 130).crop(img).shape == (130, 130, 3)


def test_input_conventions() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    t = to_tensor(rgb)
    assert t.shape == (3, 8, 8) and float(t[0].max()) == 1.0
    e = esr_input(t)
    assert e.shape == (3, 96, 96)
    assert torch.allclose(e[2], torch.ones(96, 96)) and float(e[0].abs().max()) == 0.0  # BGR: red is channel 2
    assert torch.allclose(xception_input(t)[0], torch.ones(8, 8)) and torch.allclose(xception_input(t)[1], -torch.ones(8, 8))


def test_presets() -> None:
    assert {"tiny", "cpu", "faces", "paper"} <= set(PRESETS)
    p = get_preset("paper")
    assert p.prepare.train_frames == 200 and p.prepare.eval_frames == 10
    assert p.emd.encoder == "xception65" and p.emd.warmup_epochs == 3 and p.emd.epochs == 20 and p.emd.batch_size == 16
    assert p.fer.branches == 9
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("huge")
    json.dumps(p.to_dict())


def test_reproduce_runs_notebooks_in_order_with_parameters(tmp_path: Path) -> None:
    from emdlib.reproduce import reproduce

    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    for i, name in enumerate(["00_a.ipynb", "01_b.ipynb"]):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        params = nbformat.v4.new_code_cell('preset = "x"\nresults_root = "."')
        params.metadata["tags"] = ["parameters"]
        body = nbformat.v4.new_code_cell(
            "from pathlib import Path\n"
            f"Path(results_root, preset, 'order.txt').open('a').write('{i}' + preset + '\\n')\n"
            f"Path(results_root, preset, 'seen_{i}.json')"
            ".write_text(Path(results_root, preset, 'timings.json').read_text())"
        )
        nb.cells = [params, body]
        nbformat.write(nb, nbdir / name)
    (tmp_path / "res/tiny").mkdir(parents=True)
    stale = {"00_a.ipynb": 999.0, "01_b.ipynb": 999.0, "02_not_run.ipynb": 5.0}
    (tmp_path / "res/tiny/timings.json").write_text(json.dumps(stale))
    timings = reproduce("tiny", data_root=tmp_path / "data", results_root=tmp_path / "res", notebook_dir=nbdir)
    assert list(timings) == ["00_a.ipynb", "01_b.ipynb"]
    assert (tmp_path / "res/tiny/order.txt").read_text() == "0tiny\n1tiny\n"
    assert (tmp_path / "res/tiny/notebooks/01_b.ipynb").is_file()
    # while notebook 01 runs it sees 00's new time, no stale time of its own, and the untouched 02
    seen = read_json(tmp_path / "res/tiny/seen_1.json")
    assert seen == {"00_a.ipynb": timings["00_a.ipynb"], "02_not_run.ipynb": 5.0}
    assert read_json(tmp_path / "res/tiny/timings.json") == {**timings, "02_not_run.ipynb": 5.0}


def test_reproduce_ensures_the_stages_a_selection_skips(tmp_path: Path, monkeypatch) -> None:
    import emdlib.study.data
    import emdlib.study.fer
    from emdlib.study import Study, ensure_stages

    ran = []
    monkeypatch.setattr(emdlib.study.data, "ensure_data", lambda study: ran.append("data"))
    monkeypatch.setattr(emdlib.study.fer, "ensure_fer_streams", lambda study: ran.append("fer"))
    study = Study.open("tiny", tmp_path / "data", tmp_path / "results")
    for selected, expected in ((["02", "03"], ["data", "fer"]), (["01", "02"], ["data"]), (["00", "06"], ["fer"]),
                               (["00", "01", "02"], []), (["01"], []), (["00"], [])):
        ran.clear()
        assert ensure_stages(study, selected) == [{"data": "data", "fer": "FER stream"}[s] for s in expected]
        assert ran == expected, selected


def test_study_parameters_reopen_the_same_study(tmp_path: Path) -> None:
    from emdlib.study import STUDY_PARAMETERS, Study

    study = Study.open("paper", tmp_path / "data", tmp_path / "results", ffpp_root=tmp_path / "ff",
                       splits_dir=tmp_path / "splits", esr_weights=tmp_path / "esr9")
    params = study.parameters()
    assert tuple(params) == STUDY_PARAMETERS
    again = Study.open(**params)
    assert again == study and again.preset.fer.esr_weights == str(tmp_path / "esr9")
    assert study.paths.world == tmp_path / "ff" and study.paths.splits == tmp_path / "splits"
    assert study.paths.cache == tmp_path / "data" / "paper" / "cache"
    assert Study.open("tiny", tmp_path / "d", tmp_path / "r").preset.fer.esr_weights is None


def test_relative_study_paths_are_read_from_the_repository(tmp_path: Path, monkeypatch) -> None:
    """A notebook's kernel may run anywhere: Study.open reads relative paths from the repository, not the cwd."""
    from emdlib.study import REPO_ROOT, Study

    monkeypatch.chdir(tmp_path)
    study = Study.open("paper", tmp_path / "d", tmp_path / "r", ffpp_root="2024", splits_dir="s", esr_weights="esr9")
    params = study.parameters()
    assert params["ffpp_root"] == str(REPO_ROOT / "2024") and params["splits_dir"] == str(REPO_ROOT / "s")
    assert params["esr_weights"] == str(REPO_ROOT / "esr9")
    assert (REPO_ROOT / "notebooks").is_dir() and (REPO_ROOT / "emdlib").is_dir()


def test_a_relative_p_path_and_a_numeric_folder_reach_notebook_02_intact(tmp_path: Path, monkeypatch) -> None:
    """emd reproduce takes relative -p paths in the directory it runs in; a folder named 2024 stays a path."""
    import emdlib.reproduce as rp

    seen: dict[str, dict] = {}
    monkeypatch.setattr(rp, "ensure_stages", lambda study, notebooks: [])
    monkeypatch.setattr(rp, "fetch_imagenet_weights", lambda study, notebooks: [])  # paper's ImageNet start: offline
    monkeypatch.setattr(rp, "_execute", lambda pm, nb, out, params, *a: seen.__setitem__(nb.name, params))
    monkeypatch.chdir(tmp_path)
    rp.reproduce("paper", "d", "r", only=["02"], raw_parameters={"ffpp_root": "2024", "splits_dir": "s/2025",
                                                                  "affectnet_root": "an", "device": "cpu",
                                                                  "workers": "3"},
                 settings={"emd.epochs": "1", "fer.esr_weights": "2026"})
    params = seen["02_emd_training.ipynb"]
    assert params["ffpp_root"] == str(tmp_path / "2024") and params["splits_dir"] == str(tmp_path / "s" / "2025")
    assert params["affectnet_root"] == str(tmp_path / "an") and params["data_root"] == str(tmp_path / "d")
    assert params["results_root"] == str(tmp_path / "r")
    assert params["settings"] == {"emd.epochs": 1, "fer.esr_weights": str(tmp_path / "2026")}
    assert params["device"] == "cpu" and params["workers"] == 3
    from emdlib.study import Study

    reopened = Study.open(**params)  # what the notebook does with them
    assert reopened.preset.emd.epochs == 1 and reopened.preset.fer.esr_weights == str(tmp_path / "2026")
    assert reopened.paths.world == tmp_path / "2024" and reopened.workers == 3


@pytest.mark.parametrize("preset,override", [("tiny", "ffpp_root"), ("cpu", "splits_dir"), ("paper", "faces_dir"),
                                             ("tiny", "faces_dir")])
def test_an_override_of_another_data_world_is_refused(preset: str, override: str, tmp_path: Path) -> None:
    """-p ffpp_root with a synthetic preset used to be half applied (the splits, not the videos)."""
    from emdlib.study import Study

    with pytest.raises(ValueError, match=f"{override} x: preset '{preset}' builds its own .* world, so it would be "
                                         f"ignored"):
        Study.open(preset, tmp_path / "d", tmp_path / "r", **{override: "x"})


def test_emd_version(capsys) -> None:
    import emdlib
    from emdlib import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"emd {emdlib.__version__}\n"
