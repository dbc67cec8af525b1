"""``emd detect``: run a trained detector on anyone's videos and images.

The face pipeline is the one used for training (design.md "prepare", reference-facts §B.4), through the same
function: :func:`emdlib.data.faces.find_faces` — dlib's frontal detector on the **full-resolution** grey frame
with one up-sampling (faces down to ~40 px wide), FF++'s square box of 1.3 × the larger side clipped to the
frame — then the crop resized to the model's input size (area interpolation when shrinking, bilinear when
enlarging) and the shared input convention (RGB ``(x - 0.5) / 0.5``; the FER stream gets ESR's 96×96 BGR [0, 1],
reference-facts §A.4). There is no smaller-scale detection of the whole frame by default: it would change the crop
(a 75-px face in a 4K frame vanishes). The one thing skipped is a frame above :data:`MAX_DETECT_PIXELS` (dlib at
training scale would need gigabytes); the output says so. Unlike training, **every** face of a sampled frame is
scored, not only the largest. Face crops of many frames are scored together in batches.

* Tracking (:class:`FaceTracker`, where the protocol allows): the protocol crops each frame's faces with dlib, so
  between full-frame detections (the first sampled frame, then every ``redetect_s`` seconds of video, default
  :data:`REDETECT_S`, and at once when a face is lost) each face is re-detected by the *same* dlib detector at the
  *same* scale in the region around its previous box (:func:`emdlib.data.faces.redetect_near`, a tenth of a 720p
  frame's pixels). Every scored box is still a dlib box of that very frame; what tracking gives up is finding a
  *new* face before the next full detection. No appearance tracker (correlation, MIL) supplies a box: its boxes
  would not be the training crop. ``redetect_s=0`` (``--redetect 0``) runs the full detector on every sampled frame.
  The ``detection`` column says which way each row's face was found (``full`` / ``tracked``).
* Face detector (``face_detector``, :data:`emdlib.data.faces.FACE_DETECTORS`): ``dlib`` (training's, the default)
  or ``dlib-fast`` (no up-sampling, faces refined at training's scale; misses faces narrower than ~60 px), for the
  full-frame detections; measured in ``results/benchmarks/face_detector_recall.json``.

* Decoding (:mod:`emdlib.data.video`, :mod:`emdlib.data.images`): the frames, times and sizes the decoder
  delivers — never the container header — upright (EXIF orientation of photos, display matrix of videos), with
  OpenCV or PyAV (AV1 and other codecs OpenCV's build lacks). Truncated images are scored with a warning and
  ``partial`` rows; videos whose frames end before the declared duration get a warning.
* Frame sampling: the first frame of each ``1/fps`` second of the decoded timeline (``fps``, default
  :data:`DEFAULT_FPS`; variable frame rates included), or every N-th frame (``every``; ``every=1`` is every frame).
  The result names the rate (:attr:`MediaResult.sampling`) and the frames scored (:attr:`MediaResult.frames_scored`):
  per-frame scores on sampled frames are still per-frame scores, and the video score their mean.
* Per face: fake probability (softmax of the 2-way logits, index 1 = fake, §IV-B) and, for segmenting models
  (EMD, MultiTask), the predicted mask's area: the share of the crop whose mask probability is > 0.5.
* Per input: the score is the mean, over sampled frames with a face, of the most-fake face's probability
  (an image is one frame); ``score >= 0.5`` → FAKE.
* Inputs: files named directly, and the image/video files under named folders (walked without following links
  in circles); the output folder and every folder ``emd detect`` wrote are never inputs, so a re-run in the same
  folder is idempotent. Unreadable folders, permission errors and link loops are reported with their real cause.
* The model: :attr:`Detector.provenance` — what the checkpoint was trained on (preset, data world, cell),
  its input size and validation accuracy, from its sidecar or its run record — goes with every result; a model
  trained on the synthetic world is flagged.

Works with any emdlib detector checkpoint (safetensors + sidecar, :mod:`emdlib.registry`) and with the
official MesoNet Keras weights (``*.h5``). Bad inputs never stop a batch: each gets a :class:`MediaResult` whose
``error`` says why (:func:`detect_file` never raises for a bad input).

Notebook use::

    from emdlib.detect import Detector, detect, detect_file
    det = Detector.from_checkpoint("runs/emd/best.safetensors")
    print(det.describe())
    res = detect_file("clip.mp4", det)               # 5 frames per second of video, faces tracked between
    res = detect_file("clip.mp4", det, every=1, redetect_s=0)   # every frame, full detection on each (slow)
    res.rows            # pandas DataFrame, one row per sampled frame and face
    res.score, res.summary()
"""

from __future__ import annotations

import logging
import math
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from emdlib.data import faces as facelib
from emdlib.data.faces import resize_crop
from emdlib.data.images import IMAGE_EXTENSIONS, ImageError, decode_image
from emdlib.data.media import check_readable, os_reason
from emdlib.data.transforms import esr_input, to_tensor, xception_input
from emdlib.data.video import VIDEO_EXTENSIONS, VideoError, mean_fps, open_video, shortfall_note, write_video
from emdlib.io import atomic_path, read_json, write_csv, write_json, write_text

log = logging.getLogger(__name__)

#: Frames with more pixels are not searched for faces (dlib at one up-sampling needs ~26 bytes and ~0.8 µs per
#: pixel: 64 Mpixels ≈ 1.7 GB and a minute); the result says so. Downscaling instead would change the crop.
MAX_DETECT_PIXELS = 64_000_000
FAKE_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
MAX_PENDING_FRAMES = 64  # with an overlay, frames wait at most this long for their batch to be scored
#: Default sampling rate of videos: frames per second of the clip (``emd detect --fps``).
DEFAULT_FPS = 5.0
#: Default seconds of video between full-frame face detections; faces are tracked in between (:class:`FaceTracker`).
REDETECT_S = 1.0
#: Written into every output folder: folders holding it are outputs of ``emd detect`` and never read as inputs.
OUTPUT_MARKER = ".emd-detect-output"

#: Columns of :attr:`MediaResult.rows` (and of the per-input CSV).
ROW_COLUMNS = ("frame", "time_s", "face", "left", "top", "right", "bottom", "box_x", "box_y", "box_size",
               "p_fake", "mask_area", "partial", "detection")

#: ``emd detect`` exit codes (documented in ``emd detect --help``).
EXIT_ALL_READ, EXIT_NONE_READ, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


class MediaError(ValueError):
    """An input that cannot be read; the message says why (the path is reported beside it)."""


@dataclass
class MediaResult:
    """Detections of one input file: one row per sampled frame and face, or an ``error`` saying why none.

    ``rows`` columns: :data:`ROW_COLUMNS` — ``frame`` index (display order), ``time_s`` (the frame's presentation
    time as decoded), ``face`` (0 = largest), the detection rectangle ``left/top/right/bottom``, the FF++ crop box
    ``box_x/box_y/box_size`` fed to the model, ``p_fake``, ``mask_area`` (share of the crop predicted manipulated;
    NaN for classification-only models), ``partial`` (True when the pixels came from a file cut short) and
    ``detection`` (``full``: the face detector on the whole frame; ``tracked``: dlib re-detection near the face's
    previous box, :class:`FaceTracker`). ``sampling`` names the sampling rate, ``frames_scored`` the indices of the
    sampled frames searched for faces (a frame with no face has no row), ``full_detections`` how many of them got a
    full-frame detection; ``face_detector`` and ``redetect_s`` are the settings used. ``kind`` is ``video``,
    ``image``, ``folder`` (a folder that could not be listed) or ``unknown``; ``decoder`` the library that decoded
    it; ``model`` the detector's :attr:`Detector.provenance`.
    """

    path: Path
    kind: str  # video | image | folder | unknown
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(ROW_COLUMNS)))
    frames_total: int = 0
    frames_sampled: int = 0
    frames_with_face: int = 0
    frames_skipped: int = 0
    width: int = 0
    height: int = 0
    fps: float = float("nan")
    score: float = float("nan")
    error: str | None = None
    decoder: str = ""
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    sampling: str = ""
    frames_scored: list[int] = field(default_factory=list)
    full_detections: int = 0
    face_detector: str = "dlib"
    redetect_s: float = REDETECT_S

    @property
    def ok(self) -> bool:
        """The input was read (whether or not a face was found)."""
        return self.error is None

    @property
    def faces(self) -> int:
        return len(self.rows)

    @property
    def verdict(self) -> str:
        if not self.ok:
            return "error"
        if self.faces == 0:
            return "no face"
        return "FAKE" if self.score >= FAKE_THRESHOLD else "real"

    def summary(self) -> str:
        """One line for stdout: what was read, how many faces, the score and the verdict (or the error)."""
        if not self.ok:
            return f"{self.path}: ERROR {self.error}"
        what = f"{self.kind} {self.width}x{self.height}"
        if self.kind == "video":
            what += f", {self.frames_total} frames, {self.frames_sampled} sampled ({self.sampling})"
        if self.faces == 0:
            line = f"{self.path}: {what}, no face found"
            if self.warnings:  # e.g. a truncated image: the warning is the likelier reason, not the face size
                line += " in what could be read"
            elif self.frames_sampled > self.frames_skipped:
                line += f" (faces narrower than ~{facelib.MIN_FACE_PX} px are not found at training scale)"
        else:
            line = (f"{self.path}: {what}, {self.faces} face{'s' * (self.faces != 1)}, "
                    f"p(fake)={self.score:.3f} -> {self.verdict}")
        if self.warnings:
            line += " (warning: " + "; ".join(self.warnings) + ")"
        return line

    def to_dict(self, with_rows: bool = True) -> dict[str, Any]:
        d = {"path": str(self.path), "kind": self.kind, "ok": self.ok, "error": self.error, "verdict": self.verdict,
             "score": None if math.isnan(self.score) else self.score, "faces": self.faces,
             "frames_total": self.frames_total, "frames_sampled": self.frames_sampled,
             "frames_with_face": self.frames_with_face, "frames_skipped": self.frames_skipped,
             "width": self.width, "height": self.height,
             "fps": None if math.isnan(self.fps) else self.fps, "decoder": self.decoder,
             "sampling": self.sampling, "frames_scored": list(self.frames_scored),
             "face_detector": self.face_detector, "redetect_s": self.redetect_s,
             "full_detections": self.full_detections,
             "warnings": list(self.warnings), "timings_s": dict(self.timings), "outputs": dict(self.outputs),
             "model": dict(self.model)}
        if with_rows:  # NaN (no mask) → null, so the JSON is strict
            d["rows"] = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                         for r in self.rows.to_dict(orient="records")]
        return d


class Detector:
    """A trained network plus its input convention.

    :meth:`score_faces` maps RGB uint8 face crops (any size; resized to ``image_size``) to fake probabilities and
    predicted masks. The model keeps the detector contract ``model(image, fer_image) -> DetectorOutput``
    (:mod:`emdlib.models.detector`).
    """

    def __init__(self, model: torch.nn.Module, image_size: int, device: str | torch.device | None = None,
                 batch_size: int = 32, name: str = "", provenance: Mapping[str, Any] | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.image_size = int(image_size)
        self.batch_size = max(1, int(batch_size))
        self.name = name or type(model).__name__
        #: What the user trusts (:func:`model_provenance`): model, input size, training data, validation accuracy.
        self.provenance: dict[str, Any] = dict(provenance) if provenance else {
            "checkpoint": None, "model": type(model).__name__, "image_size": self.image_size, "trained_on": None,
            "synthetic": False, "source": "a model passed in by the caller"}

    def describe(self) -> list[str]:
        """The model summary ``emd detect`` prints: one line, plus a warning line for a synthetic-world model."""
        return describe_provenance(self.provenance)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | None = None, batch_size: int = 32) -> "Detector":
        """Load an emdlib detector checkpoint (``.safetensors`` + sidecar with ``model`` and ``image_size``) or an
        official MesoNet Keras weights file (``.h5``; input 256×256)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        from emdlib import registry

        if path.suffix.lower() in (".h5", ".hdf5"):
            model = registry.mesonet_from_h5(path)
            prov = {"checkpoint": str(path), "model": "MesoNet (official Keras weights)",
                    "image_size": registry.MESONET_INPUT_SIZE,
                    "trained_on": "the MesoNet authors' Deepfake / Face2Face face sets (Afchar et al., WIFS 2018)",
                    "synthetic": False, "val_accuracy": None, "source": "official weights file"}
            return cls(model, registry.MESONET_INPUT_SIZE, device, batch_size, name=path.name, provenance=prov)
        model, meta = registry.model_from_checkpoint(path)
        size = meta.get("image_size") or (meta.get("config") or {}).get("image_size")
        if not size:
            raise ValueError(f"{path}: sidecar has no image_size (write checkpoints with registry.save_detector)")
        return cls(model, int(size), device, batch_size, name=path.name,
                   provenance=model_provenance(path, meta, int(size)))

    def prepare(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Stack crops resized to ``image_size`` as ``(N, S, S, 3)`` uint8."""
        return np.stack([resize_crop(c, self.image_size) for c in crops])

    @torch.no_grad()
    def score_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(N, S, S, 3)`` uint8 crops at ``image_size`` → ``(p_fake (N,), mask probabilities (N, S, S) or None)``."""
        probs, masks = [], []
        for start in range(0, len(batch), self.batch_size):
            rgb01 = to_tensor(batch[start : start + self.batch_size]).to(self.device)
            out = self.model(xception_input(rgb01), esr_input(rgb01))
            probs.append(out.prob.cpu().numpy())
            masks.append(None if out.mask_logits is None else out.mask_prob.cpu().numpy())
        if not probs:
            return np.zeros(0, np.float32), None
        return np.concatenate(probs), (None if any(m is None for m in masks) else np.concatenate(masks))

    def score_faces(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Fake probability and predicted mask (probabilities at the crop's own size, or None) for RGB uint8 crops."""
        if not len(crops):
            return np.zeros(0, np.float32), []
        probs, masks = self.score_batch(self.prepare(crops))
        if masks is None:
            return probs, [None] * len(crops)
        return probs, [cv2.resize(m, (c.shape[1], c.shape[0]), interpolation=cv2.INTER_LINEAR)
                       for m, c in zip(masks, crops)]


# -- what the user trusts ---------------------------------------------------------------------------------------
def model_provenance(path: str | os.PathLike, sidecar: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """What a detector checkpoint was trained on, for the user who trusts its scores.

    Returns ``{"checkpoint", "model", "image_size", "trained_on", "world", "preset", "method", "compression",
    "val_accuracy", "epoch", "test_accuracy", "synthetic", "source"}`` (None where unknown). Read, in order, from:

    1. the checkpoint's sidecar (``model``, ``image_size``, ``epoch``, ``val.accuracy``, and ``preset`` / ``world``
       / ``method`` / ``compression`` when the trainer recorded them);
    2. the study's run record ``results/<preset>/runs/<run>/metrics.json`` of a checkpoint in the study layout
       ``<data>/<preset>/checkpoints/runs/<run>/best.safetensors`` — only when that record names this checkpoint;
    3. the preset named by that folder layout (``source`` then says the data world was inferred from it).

    ``synthetic`` is True for the synthetic world (rendered faces): such a model's scores on real media mean nothing.
    """
    from emdlib.presets import PRESETS

    path = Path(path)
    side = sidecar if isinstance(sidecar, Mapping) else {}
    spec = side.get("model") if isinstance(side.get("model"), Mapping) else {}
    val = side.get("val") if isinstance(side.get("val"), Mapping) else {}
    preset = side.get("preset")
    preset_name = preset.get("name") if isinstance(preset, Mapping) else preset if isinstance(preset, str) else None
    data = side.get("data") if isinstance(side.get("data"), Mapping) else {}
    world = side.get("world") or data.get("world") or (preset.get("data", {}).get("world")
                                                       if isinstance(preset, Mapping) else None)
    info: dict[str, Any] = {
        "checkpoint": str(path), "model": spec.get("name") or spec.get("kind"), "image_size": int(image_size),
        "world": world, "preset": preset_name, "method": side.get("method"), "compression": side.get("compression"),
        "val_accuracy": val.get("accuracy"), "epoch": side.get("epoch"), "test_accuracy": None,
        "source": "checkpoint sidecar" if (world or preset_name) else None,
    }
    layout = path.resolve().parents
    if len(layout) >= 4 and layout[1].name == "runs" and layout[2].name == "checkpoints":
        folder_preset, run = layout[3].name, path.resolve().parent.name
        record = _run_record(path, layout[3], folder_preset, run)
        if record is not None:
            cfg = record.get("config") if isinstance(record.get("config"), Mapping) else {}
            rp = cfg.get("preset") if isinstance(cfg.get("preset"), Mapping) else {}
            info["preset"] = info["preset"] or rp.get("name") or record.get("preset")
            info["world"] = info["world"] or (rp.get("data") or {}).get("world")
            info["method"] = info["method"] or record.get("method") or cfg.get("method")
            info["compression"] = info["compression"] or record.get("compression") or cfg.get("compression")
            metrics = record.get("metrics") if isinstance(record.get("metrics"), Mapping) else {}
            info["test_accuracy"] = metrics.get("accuracy")
            info["source"] = info["source"] or f"run record {record['_path']}"
        if info["world"] is None and folder_preset in PRESETS:
            info["preset"] = info["preset"] or folder_preset
            info["world"] = PRESETS[folder_preset].data.world
            info["source"] = f"inferred from the checkpoint's folder (preset {folder_preset!r})"
    if info["preset"] and info["world"] is None and info["preset"] in PRESETS:
        info["world"] = PRESETS[info["preset"]].data.world
    worlds = {"synth": "the synthetic world (rendered faces)", "faces": "forged photographs (the faces world)",
              "ffpp": "FaceForensics++"}
    what = worlds.get(info["world"], info["world"]) if info["world"] else None
    if what:
        cell = " ".join(str(v) for v in (info["method"], info["compression"]) if v)
        what += (f", preset {info['preset']}" if info["preset"] else "") + (f", {cell}" if cell else "")
    info["trained_on"] = what
    info["synthetic"] = info["world"] == "synth"
    return info


def _run_record(path: Path, preset_dir: Path, preset: str, run: str) -> dict[str, Any] | None:
    """The study's run record of a checkpoint in the study layout, if one names this very file."""
    candidates = [preset_dir.parent.parent / "results" / preset / "runs" / run / "metrics.json",
                  Path.cwd() / "results" / preset / "runs" / run / "metrics.json"]
    for c in dict.fromkeys(candidates):
        try:
            record = read_json(c)
        except (OSError, ValueError):
            continue
        ck = record.get("checkpoint") if isinstance(record, dict) else None
        try:
            if ck and os.path.samefile(ck, path):
                return {**record, "_path": str(c)}
        except OSError:
            continue
    return None


def describe_provenance(info: Mapping[str, Any]) -> list[str]:
    """``model: <name> (<checkpoint>), input NxN, trained on <data>, validation accuracy A (epoch E)`` and, for a
    model of the synthetic world, a ``WARNING`` line."""
    parts = [f"model: {info.get('model') or 'unknown architecture'}"
             + (f" ({info['checkpoint']})" if info.get("checkpoint") else ""),
             f"input {info.get('image_size')}x{info.get('image_size')}",
             f"trained on {info['trained_on']}" if info.get("trained_on")
             else "training data unknown (the checkpoint does not record it)"]
    acc = info.get("val_accuracy")
    parts.append(f"validation accuracy {acc:.3f}" + (f" (epoch {info['epoch']})" if info.get("epoch") else "")
                 if isinstance(acc, (int, float)) else "validation accuracy not recorded")
    if isinstance(info.get("test_accuracy"), (int, float)):
        parts.append(f"test accuracy {info['test_accuracy']:.3f}")
    if info.get("source") and info.get("source") not in ("checkpoint sidecar",):
        parts.append(f"provenance: {info['source']}")
    lines = [", ".join(parts)]
    if info.get("synthetic"):
        lines.append("WARNING: this model was trained on the synthetic world (rendered cartoon faces, not real "
                     "people): its scores on real photos and videos say nothing about manipulation")
    return lines


# -- inputs ---------------------------------------------------------------------------------------------------------
def media_kind(path: str | os.PathLike) -> str:
    """``"video"``, ``"image"`` or ``"unknown"`` from the file extension."""
    ext = Path(path).suffix.lower()
    return "video" if ext in VIDEO_EXTENSIONS else "image" if ext in IMAGE_EXTENSIONS else "unknown"


@dataclass(frozen=True)
class MediaItem:
    """One input found by :func:`iter_media`: a file to score (``problem`` None) or a path that could not be
    listed or followed, with the reason (``problem``). ``folder`` is the named folder it was found under."""

    path: Path
    folder: Path | None = None
    problem: str | None = None


def is_output_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` was written by ``emd detect`` (it holds :data:`OUTPUT_MARKER`)."""
    return os.path.lexists(os.path.join(folder, OUTPUT_MARKER))


def iter_media(paths: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()) -> Iterator[MediaItem]:
    """The inputs of ``emd detect``: files named directly (whatever their type, so that a wrong one is reported)
    and the image/video files under named folders, recursively and sorted (other files there are skipped, and
    counted in the log).

    Never yielded: the folders in ``exclude`` (the output folder) and every folder holding
    :data:`OUTPUT_MARKER` (earlier outputs), however they are reached. Symbolic links are followed, each real
    folder once, so a link loop ends the walk there (logged). A folder that cannot be listed (permission denied,
    I/O error), a link loop or a dangling link met on the way is yielded with its ``problem``, so that the caller
    reports it and the exit code counts it; named paths that do not exist are yielded as files (they get an
    error row).
    """
    excluded = set()
    for e in exclude:
        try:
            excluded.add(_real(e))
        except OSError:
            pass
    for p in map(Path, paths):
        try:
            is_dir = p.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            yield MediaItem(p, None)
            continue
        if _real(p) in excluded or is_output_folder(p):
            log.warning("%s: skipped, it is an output folder of emd detect", p)
            continue
        found: list[MediaItem] = []
        other: list[Path] = []
        for item in _walk(p, excluded, set()):
            if item.problem is None and media_kind(item.path) == "unknown":
                other.append(item.path)
            else:
                found.append(MediaItem(item.path, p, item.problem))
        if other:
            shown = ", ".join(str(o.relative_to(p)) for o in sorted(other)[:10])
            more = f" and {len(other) - 10} more" if len(other) > 10 else ""
            log.info("%s: skipping %d file(s) that are neither images nor videos: %s%s", p, len(other), shown, more)
        if not found:
            log.warning("%s: folder holds no image or video files", p)
        yield from sorted(found, key=lambda m: m.path.as_posix())


def _real(path: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk(folder: Path, excluded: set, seen: set) -> Iterator[MediaItem]:
    """Files under ``folder`` (links followed, each real folder once); problems as items with a reason."""
    try:
        key = _real(folder)
    except OSError as e:
        yield MediaItem(folder, problem=f"cannot open folder: {os_reason(e, folder)}")
        return
    if key in seen:
        log.warning("%s: symbolic link loop (leads back to a folder already searched); not followed", folder)
        return
    seen.add(key)
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield MediaItem(folder, problem=f"cannot list folder: {os_reason(e, folder)}")
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        try:
            st = os.stat(path)  # follows links
        except OSError as e:
            if media_kind(path) != "unknown" or entry.is_symlink():
                yield MediaItem(path, problem=os_reason(e, path))
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in excluded or is_output_folder(path):
                log.info("%s: skipped, it is an output folder of emd detect", path)
                continue
            yield from _walk(path, excluded, seen)
        elif stat.S_ISREG(st.st_mode):
            yield MediaItem(path)


def sampling_name(fps: float | None = None, every: int | None = None) -> str:
    """How :func:`frame_sampler` with these arguments samples a video, in words: ``"5 fps"``, ``"every frame"``,
    ``"every 10th frame"``."""
    if every is not None:
        n = int(every)
        if n == 1:
            return "every frame"
        suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
        return f"every {n}{suffix} frame"
    return f"{fps if fps is not None else DEFAULT_FPS:g} fps"


def frame_sampler(fps: float | None = None, every: int | None = None) -> Callable[[int, float], bool]:
    """Which frames are scored, as ``sample(index, time_s) -> bool``: every ``every``-th from 0 (``every=1``: all),
    or the first frame of each ``1/fps``-second interval of the decoded timeline (frame times as the decoder stamps
    them, so variable frame rates are sampled evenly in time); neither given: ``fps`` = :data:`DEFAULT_FPS`.
    Raises ValueError for both, or for a non-positive value."""
    if every is None and fps is None:
        fps = DEFAULT_FPS
    if every is not None and fps is not None:
        raise ValueError("give either fps or every, not both")
    if every is not None:
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        step = int(every)
        return lambda i, t: i % step == 0
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    last = [-1]  # the last interval that got a frame

    def sample(i: int, t: float) -> bool:
        # small epsilon so that e.g. 25 fps sampled at 5 fps picks frames 0, 5, 10, ... despite float rounding
        k = math.floor(t * float(fps) + 1e-6)
        if i == 0 or k > last[0]:
            last[0] = max(k, 0)
            return True
        return False

    return sample


class FaceTracker:
    """The faces of the successive sampled frames of one video: full detection at key frames, dlib re-detection
    near each face in between.

    ``tracker(frame, time_s) -> (faces, full)``: ``frame`` RGB uint8 ``(H, W, 3)``, ``time_s`` its time in seconds
    (non-decreasing); ``faces`` as :func:`emdlib.data.faces.find_faces` gives them (largest first), ``full`` whether
    this frame got a full-frame detection. A frame gets one (:func:`~emdlib.data.faces.find_faces` with
    ``detector``) when it is the first, when ``redetect_s`` seconds of video have passed since the last one, or when
    a face of the previous sampled frame is lost (dlib finds no face with score ≥ 0 overlapping its region: the
    tracking confidence has dropped). Otherwise each face is re-detected by dlib at training's scale in the region
    around its previous rectangle (:func:`~emdlib.data.faces.redetect_near`), so every box is a dlib box of this very
    frame — the per-frame dlib crops of the protocol (reference-facts §B.4); new faces wait for the next full
    detection. ``redetect_s=0``: a full detection on every frame. Raises ValueError for an unknown detector or a
    negative ``redetect_s``.
    """

    def __init__(self, detector: str = "dlib", redetect_s: float = REDETECT_S):
        if detector not in facelib.FACE_DETECTORS:
            raise ValueError(f"unknown face detector {detector!r} (choose from {', '.join(facelib.FACE_DETECTORS)})")
        if not redetect_s >= 0:
            raise ValueError(f"redetect_s must be >= 0 seconds, got {redetect_s}")
        self.detector = detector
        self.redetect_s = float(redetect_s)
        self.rects: list[tuple[int, int, int, int]] | None = None  # faces of the previous frame; None: none yet
        self.last_full = -math.inf
        self.full_detections = 0
        self.tracked = 0

    def __call__(self, frame: np.ndarray, time_s: float) -> tuple[list[facelib.Face], bool]:
        due = (self.rects is None or self.redetect_s == 0
               or time_s - self.last_full >= self.redetect_s - 1e-6)
        if not due:
            rects: list[tuple[int, int, int, int]] = []
            for prev in self.rects:
                found = facelib.redetect_near(frame, prev)
                if found is None:  # lost: look at the whole frame now
                    due = True
                    break
                if all(facelib.iou(found[0], r) < 0.5 for r in rects):  # two faces merged into one: keep one
                    rects.append(found[0])
        if due:
            faces = facelib.find_faces(frame, self.detector)
            self.last_full = time_s
            self.full_detections += 1
        else:
            rects.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
            faces = [facelib.Face(r, facelib.crop_box(r, frame.shape)) for r in rects]
            self.tracked += 1
        self.rects = [f.rect for f in faces]
        return faces, due


# -- overlay --------------------------------------------------------------------------------------------------------
def overlay(frame: np.ndarray, faces: Sequence[dict]) -> np.ndarray:
    """Draw each face's crop box and score (red = fake, green = real) and its predicted mask as a JET heat-map
    blended inside the box (opacity 0.5 × mask probability)."""
    out = frame.copy()
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    for f in faces:
        if "p_fake" not in f or f["p_fake"] is None:
            continue
        x, y, s = int(f["box_x"]), int(f["box_y"]), int(f["box_size"])
        mask = f.get("_mask")
        if mask is not None and s > 0:
            region = out[y : y + s, x : x + s]
            m = np.clip(cv2.resize(mask.astype(np.float32), (region.shape[1], region.shape[0])), 0, 1)
            heat = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
            alpha = (0.5 * m)[..., None]
            region[:] = (region * (1 - alpha) + heat * alpha).round().astype(np.uint8)
        colour = (230, 40, 40) if f["p_fake"] >= FAKE_THRESHOLD else (40, 210, 40)
        cv2.rectangle(out, (x, y), (x + s - 1, y + s - 1), colour, thick)
        scale = max(0.4, s / 300)
        label = f"fake {f['p_fake']:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - 4 - th >= 0 else min(h - base, y + s + th + 4)
        cv2.rectangle(out, (x, ty - th - 2), (x + tw + 2, ty + base), colour, -1)
        cv2.putText(out, label, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad odd sides by one edge pixel (H.264 yuv420p needs even sides); never resample."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


# -- the per-file pipeline --------------------------------------------------------------------------------------------
class _Scorer:
    """Collects face crops of many frames and scores them in batches; frames waiting for an overlay are released
    in order once their faces are scored."""

    def __init__(self, detector: Detector, timings: dict[str, float], keep_frames: bool):
        self.detector = detector
        self.t = timings
        self.keep_frames = keep_frames
        self.crops: list[np.ndarray] = []
        self.faces: list[dict] = []
        self.frames: list[tuple[np.ndarray, list[dict], float]] = []
        self.shown: list[dict] = []  # faces drawn on the last overlaid frame (their masks are still needed)

    def add(self, faces: list[dict], crops: list[np.ndarray]) -> None:
        self.faces += faces
        self.crops += crops

    def hold(self, frame: np.ndarray, faces: list[dict], time_s: float) -> None:
        self.frames.append((frame, faces, time_s))

    @property
    def due(self) -> bool:
        return len(self.crops) >= self.detector.batch_size or len(self.frames) >= MAX_PENDING_FRAMES

    def flush(self) -> Iterator[tuple[np.ndarray, float]]:
        if self.crops:
            t0 = time.perf_counter()
            probs, masks = self.detector.score_batch(np.stack(self.crops))
            self.t["network"] += time.perf_counter() - t0
            for k, f in enumerate(self.faces):
                f["p_fake"] = float(probs[k])
                if masks is None:
                    f["mask_area"] = float("nan")
                else:
                    f["mask_area"] = float((masks[k] > MASK_THRESHOLD).mean())
                    if self.keep_frames:
                        f["_mask"] = masks[k]
            self.crops, self.faces = [], []
        frames, self.frames = self.frames, []
        for frame, faces, time_s in frames:
            if faces is not self.shown:
                # frames are held in order and a sampled frame's faces are shown on a contiguous run of frames:
                # once another list appears the previous one is never drawn again, so its masks (views that pin a
                # whole batch of masks) can go instead of living on in the per-face rows until the file ends
                for f in self.shown:
                    f.pop("_mask", None)
                self.shown = faces
            t0 = time.perf_counter()
            out = overlay(frame, faces)
            self.t["overlay"] += time.perf_counter() - t0
            yield out, time_s


def detect_file(
    path: str | os.PathLike,
    detector: Detector,
    fps: float | None = None,
    every: int | None = None,
    overlay_path: str | os.PathLike | None = None,
    progress: bool = True,
    face_detector: str = "dlib",
    redetect_s: float = REDETECT_S,
) -> MediaResult:
    """Detect and score every face in the sampled frames of one video or image.

    Sampling (``fps`` or ``every``; neither: :data:`DEFAULT_FPS` frames per second) as :func:`frame_sampler`; faces
    found by a :class:`FaceTracker` with ``face_detector`` and ``redetect_s`` (an image always gets the full
    detection).

    Never raises for a bad input: the returned :class:`MediaResult` then has ``error`` set (and no rows) naming the
    problem. With ``overlay_path`` an annotated copy is written: every frame of a video (unsampled frames show the
    last sampled frame's boxes) at the input's size (odd sides padded by one pixel), or the image. The overlay video
    runs at the container's average frame rate with each frame placed at its decoded time (a variable-rate clip
    stays in sync: frames are repeated or, where two fall in one slot, the earlier one dropped).
    """
    path = Path(path)
    res = MediaResult(path=path, kind=media_kind(path), model=dict(detector.provenance),
                      sampling=sampling_name(fps, every), face_detector=face_detector, redetect_s=float(redetect_s))
    tracker = FaceTracker(face_detector, redetect_s)
    t = {"decode": 0.0, "detect": 0.0, "network": 0.0, "overlay": 0.0, "write": 0.0}
    t_start = time.perf_counter()
    rows: list[dict] = []
    try:
        check_readable(path, MediaError)
        if res.kind == "unknown":
            raise MediaError(f"not a supported image or video (extension {path.suffix or '(none)'!r}; images: "
                             f"{' '.join(IMAGE_EXTENSIONS)}; videos: {' '.join(VIDEO_EXTENSIONS)})")
        _run(path, res, detector, tracker, fps, every, overlay_path, progress, t, rows)
    except (MediaError, VideoError, ImageError, cv2.error, MemoryError) as e:
        res.error = _reason(e, path)
    except OSError as e:
        res.error = os_reason(e, path)
    except Exception as e:  # a batch must never stop on one input; keep the traceback in the log
        log.exception("%s: unexpected error", path)
        res.error = f"unexpected error: {type(e).__name__}: {_reason(e, path)}"
    res.full_detections = tracker.full_detections
    if res.error:
        rows = []
        res.outputs.pop("overlay", None)
    res.rows = pd.DataFrame(rows, columns=list(ROW_COLUMNS))  # the columns drop the overlay's private _mask
    if len(res.rows):
        res.score = float(res.rows.groupby("frame")["p_fake"].max().mean())
        res.frames_with_face = int(res.rows["frame"].nunique())
    t["total"] = time.perf_counter() - t_start
    res.timings = {k: round(v, 4) for k, v in t.items()}
    if res.error:
        log.warning("%s: %s", path, res.error)
    for w in res.warnings:
        log.warning("%s: %s", path, w)
    return res


def _reason(e: BaseException, path: Path) -> str:
    msg = str(e).strip() or type(e).__name__
    for prefix in (f"{path}: ", f"{path}:"):
        msg = msg.replace(prefix, "")
    return msg.splitlines()[0] if msg else type(e).__name__


def _run(path: Path, res: MediaResult, detector: Detector, tracker: FaceTracker, fps: float | None,
         every: int | None,
         overlay_path: str | os.PathLike | None, progress: bool, t: dict[str, float], rows: list[dict]) -> None:
    want_overlay = overlay_path is not None
    t0 = time.perf_counter()
    partial = False
    times: list[float] = []
    video = None
    if res.kind == "image":
        img = decode_image(path)
        partial = img.truncated
        res.warnings += img.notes
        res.decoder = f"Pillow ({img.format} {img.mode}" + (f", EXIF orientation {img.orientation}"
                                                            if img.orientation != 1 else "") + ")"
        res.sampling = "image"
        source: Iterator[tuple[int, float, np.ndarray | None, bool]] = iter([(0, 0.0, img.rgb, True)])
        res.height, res.width = img.rgb.shape[:2]
        total = 1
    else:
        video = open_video(path)
        res.decoder = f"{'OpenCV' if video.backend == 'opencv' else 'PyAV'} ({video.info.describe()})"
        sample = frame_sampler(fps, every)
        flags: dict[int, bool] = {}

        def want(i: int, ts: float) -> bool:
            flags[i] = sample(i, ts)
            return flags[i] or want_overlay

        source = ((f.index, f.time_s, f.rgb, flags.pop(f.index, False)) for f in video.frames(want))
        total = video.info.declared_frames or None  # the progress bar's estimate only
    t["decode"] += time.perf_counter() - t0
    scorer = _Scorer(detector, t, keep_frames=want_overlay)
    bar = tqdm(total=total, desc=path.name, unit="frame", leave=False,
               disable=not progress or res.kind == "image" or (total or 0) < 200)

    def annotated() -> Iterator[tuple[np.ndarray, float]]:
        current: list[dict] = []  # faces of the last sampled frame (shown on the frames that follow)
        while True:
            t0 = time.perf_counter()
            item = next(source, None)
            t["decode"] += time.perf_counter() - t0
            if item is None:
                break
            idx, ts, frame, sampled = item
            bar.update(1)
            res.frames_total += 1
            times.append(ts)
            if frame is not None and (res.width, res.height) == (0, 0):
                res.height, res.width = frame.shape[:2]
            if sampled and frame is not None:
                res.frames_sampled += 1
                current = _faces_of(frame, idx, ts, partial, detector, tracker, res, scorer, t)
                rows.extend(current)
            if want_overlay and frame is not None:
                scorer.hold(frame, current, ts)
            if scorer.due:
                yield from scorer.flush()
        yield from scorer.flush()

    try:
        frames = annotated()
        if want_overlay:
            first = next(frames, None)
            if first is None:
                raise MediaError("no decodable frames")
            rate = video.info.declared_fps if video is not None else float("nan")
            _write_overlay(Path(overlay_path), first, frames, res, t, rate if rate > 0 else 25.0)
        else:
            for _ in frames:
                pass
    finally:
        bar.close()
        if video is not None:
            video.close()
    if res.frames_total == 0:
        raise MediaError("no decodable frames")
    if video is not None:
        res.fps = mean_fps(times)
        note = shortfall_note(video.info, times, video.problem)
        if note:
            res.warnings.append(note)
    if res.frames_skipped:
        res.warnings.append(f"{res.frames_skipped} sampled frame{'s' * (res.frames_skipped != 1)} not searched for "
                            f"faces: {res.width}x{res.height} is above {MAX_DETECT_PIXELS // 1_000_000} Mpixels, "
                            "more than dlib can search at training scale here (downscaling would change the crop; "
                            "crop or downscale the input yourself, keeping faces at least "
                            f"{facelib.MIN_FACE_PX} px wide)")


def _faces_of(frame: np.ndarray, idx: int, ts: float, partial: bool, detector: Detector, tracker: FaceTracker,
              res: MediaResult, scorer: _Scorer, t: dict[str, float]) -> list[dict]:
    """Find the faces of one sampled frame (:class:`FaceTracker`: training's dlib boxes) and queue their crops."""
    if frame.shape[0] * frame.shape[1] > MAX_DETECT_PIXELS:
        res.frames_skipped += 1
        return []
    t0 = time.perf_counter()
    found, full = tracker(frame, ts)
    found = [f for f in found if f.usable]
    res.frames_scored.append(idx)
    t["detect"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    current, crops = [], []
    for k, f in enumerate(found):
        (l, tp, r, b), box = f.rect, f.box
        current.append({"frame": idx, "time_s": round(float(ts), 4), "face": k, "left": l, "top": tp, "right": r,
                        "bottom": b, "box_x": box.x, "box_y": box.y, "box_size": box.size, "p_fake": None,
                        "mask_area": None, "partial": bool(partial), "detection": "full" if full else "tracked"})
        crops.append(resize_crop(box.crop(frame), detector.image_size))
    scorer.add(current, crops)
    t["network"] += time.perf_counter() - t0  # crop + resize: the network's input pipeline
    return current


def _write_overlay(path: Path, first: tuple[np.ndarray, float], rest: Iterator[tuple[np.ndarray, float]],
                   res: MediaResult, t: dict[str, float], rate: float) -> None:
    t0 = time.perf_counter()
    busy0 = sum(v for k, v in t.items() if k != "write")
    if res.kind == "image":
        with atomic_path(path, suffix=path.suffix or ".png") as tmp:
            if not cv2.imwrite(str(tmp), cv2.cvtColor(first[0], cv2.COLOR_RGB2BGR)):
                raise MediaError(f"{path}: could not write the overlay image")
    else:
        def placed() -> Iterator[np.ndarray]:
            # frame k fills the output slots from round(t_k · rate) up to the next frame's slot (at least the last)
            prev, prev_slot = None, 0
            for frame, ts in _chain_first(first, rest):  # the generator scores frames as the writer pulls them
                slot = max(0, int(round(ts * rate)))
                if prev is not None:
                    for _ in range(slot - prev_slot):
                        yield prev
                    prev_slot = max(prev_slot, slot)
                prev = _even(frame)
            if prev is not None:
                yield prev

        write_video(path, placed(), crf=18, fps=rate)
    # the writer pulls frames through the whole pipeline: count only the time not already booked elsewhere
    busy = sum(v for k, v in t.items() if k != "write") - busy0
    t["write"] += max(0.0, time.perf_counter() - t0 - busy)
    res.outputs["overlay"] = str(path)


def _chain_first(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


# -- batch API --------------------------------------------------------------------------------------------------------
def _output_stem(path: Path, folder: Path | None, used: set[str]) -> str:
    """Output name for an input: its path relative to the named folder (folders mirrored), else its file name; the
    extension is kept (``clip.mp4`` → ``clip.mp4.csv``) and clashes get ``~2``, ``~3``, ..."""
    try:
        rel = path.relative_to(folder).as_posix() if folder is not None else path.name
    except ValueError:
        rel = path.name
    stem, n = rel, 1
    while stem in used:
        n += 1
        stem = f"{rel}~{n}"
    used.add(stem)
    return stem


def overlay_suffix(path: Path) -> str:
    ext = path.suffix.lower()
    if media_kind(path) == "video":
        return ".mp4"
    return ext if ext in (".jpg", ".jpeg", ".png", ".webp") else ".png"


def detect(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    checkpoint: str | os.PathLike | Detector,
    out_dir: str | os.PathLike | None = None,
    fps: float | None = None,
    every: int | None = None,
    overlay: bool = False,
    device: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
    face_detector: str = "dlib",
    redetect_s: float = REDETECT_S,
) -> list[MediaResult]:
    """Score every input (files or folders) with a detector; what ``emd detect`` runs.

    With ``out_dir``, per input ``<name>.csv`` (the rows), ``<name>.json`` (summary, warnings, timings, the model's
    provenance and rows; written for failed inputs too, with the error) and, with ``overlay``,
    ``<name>.overlay.mp4|png``; plus ``summary.csv`` with one line per input. ``<name>`` is the input's file name
    (extension kept), or its path relative to the folder it was found in. ``out_dir`` is marked
    (:data:`OUTPUT_MARKER`) and never read as input, wherever it is, so re-running in the same folder gives the same
    outputs. A folder that cannot be listed and a link that cannot be followed become error results naming the real
    cause. ``checkpoint`` may be a loaded :class:`Detector`; its :meth:`Detector.describe` lines are logged.
    """
    frame_sampler(fps, every)  # validate (fps or every, not both; positive) before loading anything
    FaceTracker(face_detector, redetect_s)  # and the face detector's name and the re-detection interval
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    det = checkpoint if isinstance(checkpoint, Detector) else Detector.from_checkpoint(checkpoint, device, batch_size)
    for line in det.describe():
        (log.warning if line.startswith("WARNING") else log.info)("%s", line.removeprefix("WARNING: "))
    out = Path(out_dir) if out_dir is not None else None
    items = list(iter_media(paths, exclude=[out] if out is not None and out.is_dir() else []))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        marker = out / OUTPUT_MARKER
        if not marker.exists():
            write_text(marker, "Outputs of `emd detect`: this folder is never read as input.\n")
    used: set[str] = set()
    results: list[MediaResult] = []
    for item in tqdm(items, desc="detect", unit="file", disable=not progress or len(items) < 2):
        stem = _output_stem(item.path, item.folder, used)
        if item.problem is not None:
            res = MediaResult(path=item.path, kind="folder" if "folder" in item.problem else media_kind(item.path),
                              error=item.problem, model=dict(det.provenance))
            log.warning("%s: %s", item.path, item.problem)
        else:
            ov = out / f"{stem}.overlay{overlay_suffix(item.path)}" if (overlay and out is not None) else None
            res = detect_file(item.path, det, fps=fps, every=every, overlay_path=ov, progress=progress,
                              face_detector=face_detector, redetect_s=redetect_s)
        if out is not None:
            _write_result(out, stem, res)
        results.append(res)
    if out is not None:
        summary = pd.DataFrame([{k: v for k, v in r.to_dict(with_rows=False).items()
                                 if k not in ("timings_s", "outputs", "warnings", "model", "frames_scored")}
                                | {"warnings": "; ".join(r.warnings), **{f"out_{k}": v for k, v in r.outputs.items()}}
                                for r in results])
        write_csv(out / "summary.csv", summary)
    return results


def _write_result(out: Path, stem: str, res: MediaResult) -> None:
    if res.ok:
        res.outputs["csv"] = str(write_csv(out / f"{stem}.csv", res.rows))
    js = out / f"{stem}.json"
    res.outputs["json"] = str(js)
    write_json(js, res.to_dict(with_rows=True))


def exit_code(results: Sequence[MediaResult]) -> int:
    """``emd detect``'s exit code: 0 every input was read (faces found or not), 3 some were read and some not,
    1 none could be read (or there were no inputs). 2 (usage or checkpoint error) is returned by the CLI itself."""
    read = sum(r.ok for r in results)
    if results and read == len(results):
        return EXIT_ALL_READ
    return EXIT_PARTIAL if read else EXIT_NONE_READ
