"""Bad-input corpus, command-line half: ``emd reproduce`` parameters, checkpoint files, CLI paths, the AffectNet CSV
loader and the leftovers of killed runs. Every input is generated here, in ``tmp_path``.

Each case asserts the message (naming the file or option and the problem), the exit status where there is a
command, the batch finishing where it is a batch, and that nothing half-written is left behind.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from emdlib import cli
from emdlib.checkpoint import load_checkpoint, load_torch_state_dict, save_checkpoint, sidecar_path
from emdlib.data.expressions import read_affectnet_csv
from emdlib.io import read_json
from emdlib.models.detector import DetectorNet, DetectorOutput
from emdlib.study import STUDY_PARAMETERS

# ------------------------------------------------------------------------------------------------------- helpers


def run(argv: list[str], caplog) -> tuple[int, list[str]]:
    """``emd ARGV`` in this process: ``(exit status, ERROR lines)``."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="emdlib"):
        code = cli.main(argv)
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


class Payload:
    """A pickle that creates ``marker`` when it is unpickled: loading it must be refused without running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


# ---------------------------------------------------------------------------------------- reproduce parameters
PARAMS = '''preset = "x"
data_root = "."
results_root = "."
folder = "out"       # a folder name
count = 1
flag = False
items = None         # type: Optional[list[int]]
'''
CODE = 'x = 1; __import__("os").system("touch PWNED"); y'

REPRODUCE_CASES = {
    # case: (extra argv, exit status, message, parameters the notebook gets)
    "unknown name": (["-p", "ffpp_rot", "2024"], 2,
                     "-p ffpp_rot: not a parameter of 00_one.ipynb; accepted names: count, flag, folder, items", None),
    "code in a name": (["-p", CODE, "0"], 2, "-p 'x = 1; __import__(\"os\").system(\"touch PWNED\"); y': not a "
                                            "parameter of 00_one.ipynb; accepted names: count, flag, folder, items",
                       None),
    "base parameter": (["-p", "preset", "paper"], 2, "-p preset: set it with --preset", None),
    "numeric-looking folder": (["-p", "folder", "2024"], 0, None, {"folder": "2024"}),
    "number for an int": (["-p", "count", "12", "-p", "items", "[3, 4]"], 0, None, {"count": 12, "items": [3, 4]}),
    "text for an int": (["-p", "count", "abc"], 2,
                        "-p count abc: count is declared int in 00_one.ipynb (default 1); expected an integer", None),
    "float for an int": (["-p", "count", "2.5"], 2, "-p count 2.5: count is declared int", None),
    "bad bool": (["-p", "flag", "maybe"], 2,
                 "-p flag maybe: flag is declared bool in 00_one.ipynb (default False); expected true or false", None),
    "bad list item": (["-p", "items", '[1, "a"]'], 2,
                      "-p items '[1, \"a\"]': items is declared Optional[list[int]] in 00_one.ipynb (default None); "
                      "item 'a' is not an int", None),
    "code as a value": (["-p", "items", "__import__('os').system('touch PWNED')"], 2,
                        "items is declared Optional[list[int]] in 00_one.ipynb (default None); expected a list "
                        "literal such as [1, 2]", None),
    "name given twice": (["-p", "count", "1", "-p", "count", "2"], 2, "-p count is given twice ('1' and '2')", None),
}


@pytest.mark.parametrize("case", list(REPRODUCE_CASES))
def test_reproduce_parameters(case, tmp_path, caplog, monkeypatch):
    import papermill

    extra, status, message, injected = REPRODUCE_CASES[case]
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print(folder)")]
    nbformat.write(nb, nbs / "00_one.ipynb")
    calls = []
    # the kernel itself is not needed: record what papermill would inject (tests/test_cli.py runs real kernels)
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, out, parameters, **kw: calls.append(parameters))
    monkeypatch.chdir(tmp_path)
    code, errors = run(["reproduce", "--preset", "tiny", "--notebooks", str(nbs), "--results", "res",
                        "--data-root", "data", *extra], caplog)
    assert code == status
    assert not (tmp_path / "PWNED").exists()
    if message is None:
        assert errors == [] and len(calls) == 1
        got = {k: v for k, v in calls[0].items() if k not in STUDY_PARAMETERS}
        assert got == injected and all(type(got[k]) is type(v) for k, v in injected.items())
    else:
        assert len(errors) == 1 and message in errors[0], errors
        assert calls == [] and files_under(tmp_path / "res") == []  # refused before anything ran or was written


# -------------------------------------------------------------------------------------------- checkpoint files
def _meso(path: Path) -> Path:
    from emdlib.baselines.mesonet import Meso4
    from emdlib.registry import model_spec, save_detector

    torch.manual_seed(0)
    save_detector(path, Meso4(), 256, spec=model_spec("meso4"))
    return path


def _legacy(path: Path, sidecar=None) -> Path:
    """Weights written without the metadata copy in their header (older emdlib, other tools)."""
    save_file({"w": torch.zeros(3)}, str(path))
    if sidecar is not None:
        sidecar_path(path).write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    return path


def _truncated(path: Path) -> Path:
    _meso(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _pickle_as_safetensors(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"w": Payload(path.parent / "PWNED")}))
    sidecar_path(path).write_text(json.dumps({"model": {"name": "meso4", "kwargs": {}}, "image_size": 256,
                                              "sha256": "0" * 64}))
    return path


def _wrong_keys(path: Path) -> Path:
    save_checkpoint(path, {"conv.weight": torch.zeros(2, 2)}, {"model": {"name": "meso4", "kwargs": {}},
                                                               "image_size": 256})
    return path


CHECKPOINT_CASES = {
    # case: (make the checkpoint in tmp_path, message)
    "missing checkpoint": (lambda d: d / "absent.safetensors", "--checkpoint {d}/absent.safetensors: no such file"),
    "missing sidecar": (lambda d: _legacy(d / "m.safetensors"),
                        "{d}/m.json: sidecar of checkpoint m.safetensors not found"),
    "sidecar is an array": (lambda d: _legacy(d / "m.safetensors", [1, 2, 3]),
                            "{d}/m.json: checkpoint sidecar must be a JSON object, found a JSON array ([1, 2, 3])"),
    "sidecar is a string": (lambda d: _legacy(d / "m.safetensors", '"x"'),
                            "{d}/m.json: checkpoint sidecar must be a JSON object, found a JSON string (\"x\")"),
    "sidecar without sha256": (lambda d: _legacy(d / "m.safetensors", {"image_size": 256}),
                               "{d}/m.json: checkpoint sidecar lacks ['sha256'] (found keys ['image_size'])"),
    "sidecar not JSON": (lambda d: _legacy(d / "m.safetensors", "{'image_size': 256"), "{d}/m.json: not valid JSON"),
    "sidecar of other weights": (lambda d: _legacy(d / "m.safetensors", {"sha256": "ab" * 32}),
                                 "{d}/m.json: sidecar does not belong to m.safetensors (sha256 abababababab… "
                                 "recorded"),
    "truncated safetensors": (lambda d: _truncated(d / "m.safetensors"),
                              "{d}/m.safetensors: not a readable safetensors checkpoint (truncated, or another format"),
    "pickle disguised as safetensors": (lambda d: _pickle_as_safetensors(d / "m.safetensors"),
                                        "{d}/m.safetensors: not a readable safetensors checkpoint"),
    "weights of another model": (lambda d: _wrong_keys(d / "m.safetensors"),
                                 "{d}/m.safetensors: weights do not match model 'meso4'"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_checkpoint_loading(case, tmp_path, caplog, monkeypatch):
    import emdlib.detect as detect

    make, message = CHECKPOINT_CASES[case]
    ckpt = make(tmp_path)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    monkeypatch.setattr(detect, "detect_file", lambda *a, **k: pytest.fail("scoring started"))
    code, errors = run(["detect", str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out")], caplog)
    assert code == cli.EXIT_USAGE
    assert len(errors) == 1 and message.format(d=tmp_path) in errors[0], errors
    assert not (tmp_path / "PWNED").exists()
    assert files_under(tmp_path / "out") == []


def test_pickle_disguised_as_pt_is_refused_without_running(tmp_path):
    pt = tmp_path / "weights.pt"
    torch.save({"conv.weight": Payload(tmp_path / "PWNED")}, pt)
    with pytest.raises(ValueError, match=r"weights.pt: cannot be loaded as a state dict with weights_only=True"):
        load_torch_state_dict(pt)
    assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------------------------------- CLI paths
def _file(d: Path, name: str = "taken") -> Path:
    (d / name).write_text("a file the user keeps\n")
    return d / name


def _deny(monkeypatch, fn_owner, fn_name: str, path: Path, arg: str) -> None:
    """Make ``fn_owner.fn_name`` raise PermissionError for ``path`` (CI runs as root: chmod would not deny)."""
    real = getattr(fn_owner, fn_name)

    def denied(*args, **kwargs):
        target = kwargs.get(arg, args[0] if args else None)
        if target is not None and Path(target).resolve() == path.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return real(*args, **kwargs)

    monkeypatch.setattr(fn_owner, fn_name, denied)


PATH_CASES = {
    # case: (argv builder (tmp_path, monkeypatch) -> argv, message)
    "prepare --cache is a file": (lambda d, m: ["prepare", "--root", str(d), "--cache", str(_file(d))],
                                  "--cache {d}/taken: exists and is a file, not a folder"),
    "prepare --cache under a file": (lambda d, m: ["prepare", "--root", str(d), "--cache", str(_file(d) / "c")],
                                     "--cache {d}/taken/c: cannot be created, {d}/taken is a file"),
    "prepare --root is a file": (lambda d, m: ["prepare", "--root", str(_file(d)), "--cache", str(d / "c")],
                                 "--root {d}/taken: is a file, not a folder"),
    "prepare --root unreadable": (lambda d, m: _deny(m, os, "scandir", d / "root", "path") or
                                  (d / "root").mkdir() or ["prepare", "--root", str(d / "root"), "--cache", str(d / "c")],
                                  "--root {d}/root: folder cannot be read (permission denied)"),
    "prepare --workers 0": (lambda d, m: ["prepare", "--root", str(d), "--cache", str(d / "c"), "--workers", "0"],
                            "--workers 0: must be at least 1"),
    "detect --out is a file": (lambda d, m: ["detect", str(d), "--checkpoint", str(_meso(d / "m.safetensors")),
                                             "--out", str(_file(d))],
                               "--out {d}/taken: exists and is a file, not a folder"),
    "detect --out unwritable": (lambda d, m: _deny(m, tempfile, "mkstemp", d / "out", "dir") or
                                (d / "out").mkdir() or ["detect", str(d), "--checkpoint",
                                                        str(_meso(d / "m.safetensors")), "--out", str(d / "out")],
                                "--out {d}/out: folder cannot be written (permission denied)"),
    "detect --device tpu": (lambda d, m: ["detect", str(d), "--checkpoint", str(_meso(d / "m.safetensors")),
                                          "--device", "tpu"],
                            "--device tpu: not a device name (use cpu, cuda, cuda:N or mps)"),
    "detect --device cuda without a GPU": (lambda d, m: m.setattr(torch.cuda, "is_available", lambda: False) or
                                           ["detect", str(d), "--checkpoint", str(_meso(d / "m.safetensors")),
                                            "--device", "cuda"],
                                           "--device cuda: no CUDA GPU is visible on this machine (use --device cpu)"),
    "synth --out is a file": (lambda d, m: ["synth", "--out", str(_file(d))],
                              "--out {d}/taken: exists and is a file, not a folder"),
    "forge --faces missing": (lambda d, m: ["forge", "--faces", str(d / "nope"), "--out", str(d / "w")],
                              "--faces {d}/nope: no such folder"),
    "reproduce --results is a file": (lambda d, m: ["reproduce", "--results", str(_file(d)), "--data-root",
                                                    str(d / "data")],
                                      "--results {d}/taken: exists and is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_cli_paths_are_checked_before_the_work(case, tmp_path, caplog, monkeypatch):
    import emdlib.data.prepare as prep
    import emdlib.detect as detect

    build, message = PATH_CASES[case]
    work = []
    monkeypatch.setattr(prep, "prepare", lambda *a, **k: work.append("prepare"))
    monkeypatch.setattr(detect, "detect_file", lambda *a, **k: work.append("detect"))
    argv = build(tmp_path, monkeypatch)
    before = files_under(tmp_path)
    code, errors = run(argv, caplog)
    assert code == cli.EXIT_USAGE
    assert errors == [message.format(d=tmp_path)]
    assert work == [] and files_under(tmp_path) == before  # nothing started, nothing written
    if (tmp_path / "taken").is_file():
        assert (tmp_path / "taken").read_text() == "a file the user keeps\n"


# ------------------------------------------------------------------------------------------------ AffectNet CSV
HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def _affectnet(d: Path, rows: list[str], header: str = HEADER, images: tuple[str, ...] = ("1/a.jpg",)) -> Path:
    for name in images:
        (d / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / "imgs" / name), np.full((40, 40, 3), 90, np.uint8))
    (d / "imgs").mkdir(exist_ok=True)
    csv = d / "training.csv"
    csv.write_text("\n".join([header] + rows) + "\n" if header else "")
    return csv


def _row(path: str = "1/a.jpg", box: str = "2,3,20,30", expression: str = "1") -> str:
    return f'{path},{box},"1.0;2.0",{expression},0.1,-0.2'


AFFECTNET_CASES = {
    # case: (header, rows, kept labels, counts, error)
    "missing columns": ("subDirectory_filePath,expression", ["1/a.jpg,1"], None, None,
                        "training.csv: missing AffectNet columns ['face_x', 'face_y', 'face_width', 'face_height'] "
                        "(found ['subDirectory_filePath', 'expression'])"),
    "empty CSV": ("", [], None, None, "training.csv: empty file, not an AffectNet CSV (no header row)"),
    "header only": (HEADER, [], None, None, "training.csv: no data rows (only the header)"),
    "expression codes 8-10": (HEADER, [_row(expression=e) for e in ("0", "8", "9", "10", "7")], [0, 7],
                              {"rows": 5, "kept": 2, "expression_none": 1, "expression_uncertain": 1,
                               "expression_no_face": 1}, None),
    "missing image file": (HEADER, [_row(), _row("1/gone.jpg"), _row(expression="3")], [1, 3],
                           {"rows": 3, "kept": 2, "missing_image": 1}, None),
    "non-numeric face box": (HEADER, [_row(box="2,three,20,30"), _row(box="2,3,,30"), _row(expression="4")], [4],
                             {"rows": 3, "kept": 1, "bad_box": 2}, None),
    "empty face box": (HEADER, [_row(box="2,3,0,30"), _row(box="2,3,20,-5"), _row(expression="5")], [5],
                       {"rows": 3, "kept": 1, "bad_box": 2}, None),
    "bad expression code": (HEADER, [_row(expression="happy"), _row(expression="11"), _row(expression="2.5"),
                                     _row(expression="6")], [6], {"rows": 4, "kept": 1, "bad_expression": 3}, None),
    "no usable row": (HEADER, [_row("1/gone.jpg"), _row(expression="9")], None, None,
                      "training.csv: none of the 2 rows is usable ({'rows': 2, 'kept': 0, 'missing_image': 1, "
                      "'expression_uncertain': 1})"),
}


@pytest.mark.parametrize("case", list(AFFECTNET_CASES))
def test_affectnet_loader(case, tmp_path, caplog):
    header, rows, labels, counts, error = AFFECTNET_CASES[case]
    csv = _affectnet(tmp_path, rows, header)
    if error is not None:
        with pytest.raises(ValueError) as e:
            read_affectnet_csv(csv, tmp_path / "imgs")
        assert str(e.value) == f"{tmp_path}/{error}"
        return
    with caplog.at_level(logging.INFO):
        samples, got = read_affectnet_csv(csv, tmp_path / "imgs")
    assert [s.label for s in samples] == labels and got == counts  # the batch finishes with the good rows
    assert all(s.path.is_file() for s in samples)
    for reason in ("missing_image", "bad_box", "bad_expression"):  # each dropped row named, by CSV line
        if reason in counts:
            assert f"{csv}: {counts[reason]} rows dropped ({reason}), e.g. line " in caplog.text
    if "missing_image" in counts:
        assert f"(missing_image), e.g. line 3: {tmp_path / 'imgs' / '1' / 'gone.jpg'}" in caplog.text


# ------------------------------------------------------------------------------------------------- killed runs
def test_killed_prepare_leftovers_are_removed_by_the_next_run(tmp_path, caplog):
    root, cache = tmp_path / "root", tmp_path / "cache"
    for split in ("train", "val", "test"):
        (root / "splits").mkdir(parents=True, exist_ok=True)
        (root / "splits" / f"{split}.json").write_text(json.dumps([["000", "001"]] if split == "train" else []))
    code, _ = run(["prepare", "--root", str(root), "--cache", str(cache), "--preset", "tiny"], caplog)
    leftovers = [cache / "c23" / "original" / ".000.crops.k1ll3d_9.tmp.npy", cache / ".manifest.a1b2c3d4.tmp.csv"]
    for p in leftovers:  # what kill -9 during np.save / the manifest write leaves
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half-written")
    code, errors = run(["prepare", "--root", str(root), "--cache", str(cache), "--preset", "tiny"], caplog)
    assert code == cli.EXIT_FAILED and errors == []  # no video on disk: no usable frame, the batch still ends
    assert not any(p.exists() for p in leftovers)
    assert "removed 2 temporary file(s) left by an interrupted run" in caplog.text
    assert read_json(cache / "summary.json")["missing_videos"] and (cache / "manifest.csv").is_file()
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]


class _Linear(DetectorNet):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 4 * 4, 2)

    def forward(self, image, fer_image=None):
        return DetectorOutput(self.fc(image.flatten(1)))


def test_killed_training_leftovers_are_removed_and_a_stale_sidecar_never_describes_new_weights(tmp_path, caplog):
    from emdlib.train import TrainConfig, fit

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    leftover = run_dir / ".last.k1ll3d_9.tmp.safetensors"
    leftover.write_bytes(b"half-written")
    items = [{"image": torch.full((3, 4, 4), float(i % 2)), "label": torch.tensor(i % 2)} for i in range(8)]
    torch.manual_seed(0)
    res = fit(_Linear(), items, items[:4], run_dir,
              TrainConfig(warmup_epochs=0, epochs=2, batch_size=4, device="cpu", image_size=4))
    assert not leftover.exists() and len(res["history"]) == 2

    # killed between the two writes of best: new weights beside the previous epoch's sidecar
    best = run_dir / "best.safetensors"
    stale = dict(read_json(sidecar_path(best)), epoch=0, sha256="0" * 64)
    sidecar_path(best).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING):
        _, meta = load_checkpoint(best)
    assert meta["epoch"] == res["best_epoch"]  # the weights' own record, not the stale sidecar's epoch 0
    assert f"{sidecar_path(best)}: sidecar was written for other weights" in caplog.text
    sidecar_path(best).unlink()  # killed before the sidecar's first write
    assert load_checkpoint(best)[1]["epoch"] == res["best_epoch"]
