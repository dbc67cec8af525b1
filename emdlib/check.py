"""``emd check``: a preflight of one study's inputs, in seconds, before hours of ``prepare`` and training.

:func:`check_study` looks at everything a :class:`~emdlib.study.Study` will read and returns :class:`Finding` s —
what is missing or malformed, where, how bad (``error``: the study would fail or silently run on less than the
protocol asks for; ``warning``: it runs, but look first) and how to fix it. It reads, never writes, and reuses the
readers the stages use, so it finds what they would find:

* **FaceForensics++** (reference-facts §B.1–§B.3; :mod:`emdlib.data.ffpp`): the split files (official format: lists
  of ``[id, id]`` pairs of 3-digit ids, disjoint); for the preset's compressions, every id of every split has its
  original video and, per method, both fakes ``<target>_<source>``; every fake has its mask video; every file is a
  readable, non-empty file. Missing files are summarised per folder ("c40: 12 of 1000 original videos missing
  (first: …)"), not listed one by one. The first video of each folder (and the first mask of each method, against
  its fake's frame size) is decoded with :mod:`emdlib.data.video` to catch a codec this machine cannot read.
* **AffectNet** (``training.csv`` / ``validation.csv`` where :func:`emdlib.data.affectnet.affectnet_layout` finds
  them): columns, rows and images through :func:`emdlib.data.expressions.read_affectnet_csv` — the FER stage's
  reader.
* **ESR-9** official weights: all ten files, loaded into a 9-branch ESR (:func:`emdlib.models.esr.load_official_esr`).
* **ImageNet weights** (:mod:`emdlib.pretrained`): a local file or folder is loaded into every timm network that
  starts from it (EMD's encoder, XceptionNet); ``pretrained=True`` without the weights in the local cache is a
  warning saying how to give a local file.
* **Disk**: free space where the face cache goes against an estimate of its size (:func:`cache_bytes`).

Synthetic worlds (``tiny``, ``cpu``, ``faces``) are built by notebook 00: their layout is checked only once built.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from emdlib.data.ffpp import FFPP, FFPP_COMPRESSIONS, ORIGINAL, SPLITS, load_splits, mask_path, target_id
from emdlib.data.media import check_readable
from emdlib.presets import EMDConfig, Preset
from emdlib.study import Study

log = logging.getLogger(__name__)

ERROR = "error"
WARNING = "warning"
SEVERITIES: tuple[str, ...] = (ERROR, WARNING)
#: How many ids or files a finding names before "…".
FIRST = 5

#: How to fetch missing FF++ files (reference-facts §B.2: the official script's -d/-c/-t options).
FFPP_DOWNLOAD = "download them with the FaceForensics++ script: python download-FaceForensics.py <ffpp_root> -d {}"
SPLITS_FIX = ("give the official split files (train.json, val.json, test.json from the FaceForensics++ repository, "
              "dataset/splits) with -p splits_dir DIR")


@dataclass(frozen=True)
class Finding:
    """One problem found by a check.

    ``severity``: ``"error"`` (the study would fail, or run on less than its protocol) or ``"warning"``;
    ``topic``: what was checked (``ffpp``, ``splits``, ``affectnet``, ``esr``, ``imagenet``, ``disk``, ``faces``);
    ``problem``: what is wrong, in one sentence; ``path``: the file or folder concerned (None when the problem names
    it already); ``fix``: how to put it right.
    """

    severity: str
    topic: str
    problem: str
    path: Path | None = None
    fix: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r}: expected one of {list(SEVERITIES)}")

    def lines(self) -> list[str]:
        """The finding as text: ``ERROR   [topic] problem``, then indented ``at:`` and ``fix:`` lines."""
        out = [f"{self.severity.upper():<8}[{self.topic}] {self.problem}"]
        if self.path is not None and str(self.path) not in self.problem:
            out.append(f"{'':8}at:  {self.path}")
        if self.fix:
            out.append(f"{'':8}fix: {self.fix}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def errors(findings: Iterable[Finding]) -> list[Finding]:
    """The findings of severity ``error``."""
    return [f for f in findings if f.severity == ERROR]


def format_findings(findings: Sequence[Finding]) -> str:
    """All findings as a readable list, errors first, ending with a count line (``2 errors, 1 warning``)."""
    ordered = sorted(findings, key=lambda f: SEVERITIES.index(f.severity))
    n_err, n_warn = len(errors(findings)), len(findings) - len(errors(findings))
    count = (f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}"
             if findings else "no problems found")
    return "\n".join([line for f in ordered for line in f.lines()] + [count])


# ----------------------------------------------------------------------------------------------------- the study
def check_study(study: Study, decode: bool = True) -> list[Finding]:
    """Every check of the module docstring for ``study`` (its preset and folders); returns the findings (empty when
    all is well). ``decode``: decode the first video of each folder (a few frames in all). Never raises for a problem
    in the data — each becomes a finding."""
    preset, paths = study.preset, study.paths
    findings: list[Finding] = []
    world = preset.data.world
    pairs: dict[str, list[tuple[str, str]]] | None = None
    if world == "ffpp" or (paths.world / "world.json").is_file():
        found, pairs = check_ffpp(paths.world, paths.splits, preset.data.methods, preset.data.compressions,
                                  decode=decode, expected_pairs=preset.data.pairs if world == "ffpp" else None)
        findings += found
        if pairs is not None and world == "ffpp":
            findings += check_cells(paths.world, paths.splits, preset.emd.cells)
    else:
        log.info("%s: the %s world is built by notebook 00; its layout is checked once it exists", paths.world, world)
    if world == "faces":
        findings += _check_faces_dir(paths.faces)
    findings += check_fer_data(study)
    findings += check_imagenet(preset.emd)
    findings += check_disk(preset, paths.cache, pairs)
    n = len(errors(findings))
    log.info("check of preset %s: %d error(s), %d warning(s)", preset.name, n, len(findings) - n)
    return findings


def _check_faces_dir(faces: Path | None) -> list[Finding]:
    if faces is None:
        return [Finding(ERROR, "faces", "the faces preset forges its world from face photos, and none were given",
                        fix="give a folder of face photos with -p faces_dir DIR (e.g. the London set)")]
    if not faces.is_dir():
        return [Finding(ERROR, "faces", f"{faces}: face photo folder not found", fix="check -p faces_dir")]
    return []


# ---------------------------------------------------------------------------------------------------------- FF++
#: The top-level folders of a FaceForensics++ root (reference-facts §B.2): a root holding neither is not one.
FFPP_TOP_FOLDERS: tuple[str, ...] = ("original_sequences", "manipulated_sequences")


def check_ffpp(root: str | os.PathLike, splits_dir: str | os.PathLike, methods: Sequence[str],
               compressions: Sequence[str], decode: bool = True,
               expected_pairs: Sequence[int] | None = None) -> tuple[list[Finding], dict | None]:
    """Check a FaceForensics++-layout tree (reference-facts §B.1–§B.3) for ``methods`` × ``compressions``.

    Returns ``(findings, splits)`` with ``splits`` as :func:`emdlib.data.ffpp.load_splits` reads them (None when
    they cannot be read; the videos are then not checked, since which ids to expect is unknown).
    ``expected_pairs``: the train/val/test pair counts of the protocol (the official 360/70/70); other counts are a
    warning.
    """
    root, splits_dir = Path(root), Path(splits_dir)
    findings: list[Finding] = []
    root_fix = ("give your FaceForensics++ copy with -p ffpp_root DIR (the folder holding original_sequences/ and "
                "manipulated_sequences/)")
    is_ffpp = root.is_dir() and any((root / top).is_dir() for top in FFPP_TOP_FOLDERS)
    if not root.is_dir():
        findings.append(Finding(ERROR, "ffpp", f"{root}: FaceForensics++ root folder not found", fix=root_fix))
    elif not is_ffpp:  # one finding, not one per missing video folder
        findings.append(Finding(ERROR, "ffpp", f"{root}: not a FaceForensics++ root (it holds neither "
                                f"{' nor '.join(f + '/' for f in FFPP_TOP_FOLDERS)})", fix=root_fix))
    try:
        splits = load_splits(splits_dir)
    except (FileNotFoundError, ValueError) as e:
        findings.append(Finding(ERROR, "splits", str(e), splits_dir, SPLITS_FIX))
        return findings, None
    if expected_pairs is not None:
        got = tuple(len(splits[s]) for s in SPLITS)
        if got != tuple(expected_pairs):
            findings.append(Finding(
                WARNING, "splits", f"the split files hold {'/'.join(map(str, got))} train/val/test pairs; the "
                f"preset expects {'/'.join(map(str, expected_pairs))}", splits_dir,
                "use the official split files (360/70/70 pairs) unless a smaller study is intended"))
    if not is_ffpp:
        return findings, splits
    ffpp = FFPP(root, splits_dir)
    samples: list[tuple[str, Path, Path | None]] = []  # (what, video, its mask) to decode
    for comp in compressions:
        for method in (ORIGINAL, *methods):
            kind = "original videos" if method == ORIGINAL else f"{method} videos"
            videos = [(split, v, p) for split in SPLITS for v, p in ffpp.videos(split, method, comp, existing=False)]
            dataset = "original" if method == ORIGINAL else method
            findings += _file_findings(videos, f"{comp}: {kind}",
                                       FFPP_DOWNLOAD.format(f"{dataset} -c {comp} -t videos"))
            first = next((p for _, _, p in videos if _is_file(p)), None)
            if first is not None:
                mask = mask_path(root, method, first.stem) if method != ORIGINAL else None
                samples.append((f"{comp} {kind}", first, mask if mask is not None and _is_file(mask) else None))
    for method in methods:
        masks = [(split, v, mask_path(root, method, v)) for split in SPLITS for v in ffpp.ids(split, method)]
        findings += _file_findings(masks, f"{method} masks", FFPP_DOWNLOAD.format(f"{method} -t masks")
                                   + " (one mask video per fake, for every compression)")
    findings += _absent_ids(ffpp, methods, compressions)
    if decode:
        findings += _decode_samples(samples)
    return findings, splits


def check_cells(root: str | os.PathLike, splits_dir: str | os.PathLike,
                cells: Sequence[tuple[str, str]]) -> list[Finding]:
    """Whether each cell ``(method, compression)`` can train and be evaluated on the copy: an error per cell and
    split that has no usable real video (the original at that compression) or no usable fake (its video at that
    compression, its mask, and its target's original at some compression, on which ``prepare`` detects the face).
    A partial copy lists many missing files; this says which of them stop a cell (the data stage would stop there,
    after ``prepare``). Counts files on disk only (nothing is decoded)."""
    ffpp = FFPP(root, splits_dir)
    out = []
    for method, comp in cells:
        short = []
        for split in SPLITS:
            reals = sum(_is_file(p) for _, p in ffpp.videos(split, ORIGINAL, comp, existing=False))
            fakes = sum(_is_file(p) and _is_file(mask_path(root, method, v))
                        and any(_is_file(ffpp.video_path(ORIGINAL, c, target_id(v))) for c in FFPP_COMPRESSIONS)
                        for v, p in ffpp.videos(split, method, comp, existing=False))
            if not reals or not fakes:
                short.append(f"{split}: {reals} real, {fakes} fake")
        if short:
            out.append(Finding(ERROR, "cells", f"cell {method} {comp} cannot train and be evaluated: usable videos "
                               f"({'; '.join(short)}) — a fake needs its video, its mask and its original", root,
                               "complete the copy for that split (the findings above name the missing files), or "
                               "leave the cell out: --set emd.cells=... (or narrower data.methods/compressions)"))
    return out


def _is_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _file_findings(files: Sequence[tuple[str, str, Path]], what: str, fix: str) -> list[Finding]:
    """Findings for the ``(split, id, path)`` files that are absent or cannot be read: one per folder and problem."""
    missing: list[tuple[str, str, Path]] = []
    bad: dict[str, list[tuple[str, str, Path]]] = {}
    for split, vid, path in files:
        if not os.path.lexists(path):
            missing.append((split, vid, path))
            continue
        try:
            check_readable(path)
        except ValueError as e:
            bad.setdefault(str(e), []).append((split, vid, path))
    out = []
    if missing:
        folders = sorted({p.parent for _, _, p in missing})
        folder = folders[0] if len(folders) == 1 else None
        if folder is not None and not folder.is_dir():
            problem = f"{what}: folder missing (all {len(files)} expected)"
        else:
            problem = f"{what}: {len(missing)} of {len(files)} missing ({_by_split(missing)}; first: " \
                      f"{_first(v for _, v, _ in missing)})"
        out.append(Finding(ERROR, "ffpp", problem, folder, fix))
    for reason, items in bad.items():
        out.append(Finding(ERROR, "ffpp", f"{what}: {len(items)} of {len(files)} cannot be read: {reason} (first: "
                                          f"{_first(str(p) for _, _, p in items)})",
                           fix="download or copy them again"))
    return out


def _by_split(items: Sequence[tuple[str, str, Path]]) -> str:
    counts = {s: sum(1 for split, _, _ in items if split == s) for s in SPLITS}
    return ", ".join(f"{s} {n}" for s, n in counts.items() if n)


def _first(names: Iterable[str], n: int = FIRST) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (", …" if len(names) > n else "")


def _absent_ids(ffpp: FFPP, methods: Sequence[str], compressions: Sequence[str]) -> list[Finding]:
    """Ids of the split files with no video at all on disk (no original and no fake at any compression): a sign
    that the split files do not belong to this FF++ copy."""
    absent = []
    for split in SPLITS:
        for a, b in ffpp.pairs(split):
            for v, other in ((a, b), (b, a)):  # v's fakes: v_other (target v) and other_v (source v), §B.1
                paths = [ffpp.video_path(ORIGINAL, c, v) for c in compressions]
                paths += [ffpp.video_path(m, c, f) for m in methods for c in compressions
                          for f in (f"{v}_{other}", f"{other}_{v}")]
                if not any(p.exists() for p in paths):
                    absent.append(f"{v} ({split})")
    if not absent:
        return []
    return [Finding(ERROR, "splits", f"{len(absent)} id(s) of the split files have no video at all in the FF++ root "
                                     f"(first: {_first(absent)})", ffpp.splits_dir,
                    "check that the split files belong to this FaceForensics++ copy (-p splits_dir), and that the "
                    "videos of these ids were downloaded")]


def _decode_samples(samples: Sequence[tuple[str, Path, Path | None]]) -> list[Finding]:
    """Decode the first frame of each sampled video (and of its mask, whose frame size must equal the video's)."""
    from emdlib.data.video import read_frames

    out = []
    for what, video, mask in samples:
        shapes = {}
        for kind, path in (("video", video), ("mask", mask)):
            if path is None:
                continue
            try:
                frames = read_frames(path, [0])
            except (ValueError, OSError) as e:  # VideoError is a ValueError; its message names the file
                out.append(Finding(ERROR, "ffpp", f"{what}: {e}", None,
                                   "re-download the file; if every file of the folder fails, install a decoder for "
                                   "its codec (OpenCV's FFmpeg or PyAV)"))
                continue
            if 0 not in frames:
                out.append(Finding(ERROR, "ffpp", f"{what}: no frame decodes from {path}", path,
                                   "re-download the file"))
                continue
            shapes[kind] = frames[0].shape[:2]
        if len(shapes) == 2 and shapes["video"] != shapes["mask"]:
            out.append(Finding(ERROR, "ffpp", f"{what}: mask {mask} has frames of {shapes['mask'][1]}x"
                                              f"{shapes['mask'][0]} px, its video {video} {shapes['video'][1]}x"
                                              f"{shapes['video'][0]} px (masks are frame-aligned with their fake)",
                               None, "re-download the masks of this method (-t masks)"))
    log.info("decoded the first frame of %d sampled videos", len(samples))
    return out


# -------------------------------------------------------------------------------------------------- FER stream
def check_fer_data(study: Study) -> list[Finding]:
    """The FER stream's inputs: the official ESR-9 folder (``esr_weights``) and the AffectNet root
    (``affectnet_root``), when given; for the FF++ world without AffectNet, a warning (the FER stage would train
    SimFER, and ESR unless the ESR-9 weights are given, on the synthetic expression set: :func:`emdlib.study.fer.
    fer_data`)."""
    findings: list[Finding] = []
    esr = study.preset.fer.esr_weights
    affectnet = study.paths.affectnet
    if esr:
        findings += check_esr_weights(esr)
    if affectnet is not None:
        findings += check_affectnet(affectnet)
    elif study.preset.data.world == "ffpp":
        trained = "SimFER (Table V)" if esr else "ESR and SimFER"
        findings.append(Finding(WARNING, "affectnet", f"no AffectNet root: {trained} would be trained on the "
                                "synthetic expression set, not on AffectNet as in the paper",
                                fix="give -p affectnet_root DIR (AffectNet's training.csv, validation.csv and images)"
                                    + ("" if esr else ", or at least -p esr_weights DIR (the official ESR-9 files)")))
    return findings


def check_esr_weights(folder: str | os.PathLike) -> list[Finding]:
    """The official ESR-9 folder: all ten files present and loading into a 9-branch ESR (reference-facts §A.3)."""
    from emdlib.models.esr import load_official_esr
    from emdlib.registry import build_model

    fix = ("put Net-Base-Shared_Representations.pt and Net-Branch_1.pt … Net-Branch_9.pt from the ESR authors' "
           "repository (model/ml/trained_models/esr_9) in the folder given with -p esr_weights")
    try:
        load_official_esr(build_model("esr", num_branches=9), folder)
    except (FileNotFoundError, ValueError) as e:
        return [Finding(ERROR, "esr", str(e), None, fix)]
    return []


def check_affectnet(root: str | os.PathLike) -> list[Finding]:
    """AffectNet's ``training.csv`` and ``validation.csv`` where the FER stage finds them
    (:func:`emdlib.data.affectnet.affectnet_layout`): readable, with the official columns, usable rows, and their
    images on disk (:func:`emdlib.data.expressions.read_affectnet_csv`, the stage's reader). A missing image is a
    warning (training drops and counts its row); no image at all is an error (wrong folder)."""
    from emdlib.data.affectnet import CSV_FOLDER, IMAGE_FOLDER, TRAINING_CSV, VALIDATION_CSV, affectnet_layout
    from emdlib.data.expressions import AFFECTNET_COLUMNS, read_affectnet_csv

    try:
        layout = affectnet_layout(root)
    except FileNotFoundError as e:
        return [Finding(ERROR, "affectnet", str(e), None,
                        "give the AffectNet copy with -p affectnet_root DIR, in the official layout: "
                        f"{CSV_FOLDER}/{TRAINING_CSV}, {CSV_FOLDER}/{VALIDATION_CSV} and {IMAGE_FOLDER}/")]
    images = layout.images
    out: list[Finding] = []
    for csv in (layout.training_csv, layout.validation_csv):
        try:
            samples, counts = read_affectnet_csv(csv, images, check_files=False)
        except (FileNotFoundError, ValueError) as e:
            out.append(Finding(ERROR, "affectnet", str(e), None,
                               f"give AffectNet's official {csv.name} (columns {', '.join(AFFECTNET_COLUMNS)})"))
            continue
        missing = [s.path for s in tqdm(samples, desc=f"check: {csv.name} images", unit="image", leave=False,
                                        disable=None) if not s.path.is_file()]
        if missing and len(missing) == len(samples):
            out.append(Finding(ERROR, "affectnet", f"{csv}: none of its {len(samples)} images is under {images} "
                                                   f"(first: {_first(str(p) for p in missing)})", None,
                               f"the images must lie at {IMAGE_FOLDER}/<subDirectory_filePath>"))
        elif missing:
            out.append(Finding(WARNING, "affectnet", f"{csv}: {len(missing)} of {len(samples)} images missing "
                                                     f"(first: {_first(str(p) for p in missing)}); their rows "
                                                     "would be dropped", None,
                               "copy the missing images, or accept the smaller set"))
        bad = {k: counts[k] for k in ("bad_expression", "bad_box") if counts.get(k)}
        if bad:
            out.append(Finding(WARNING, "affectnet", f"{csv}: rows that cannot be used would be dropped: "
                                                     f"{', '.join(f'{v} {k}' for k, v in bad.items())}", None,
                               "see the log for their line numbers"))
    return out


# --------------------------------------------------------------------------------------------------- ImageNet
def imagenet_models(emd: EMDConfig) -> list[str]:
    """The timm networks that start from the preset's ImageNet weights: EMD's encoder and XceptionNet."""
    from emdlib.baselines.xception import TIMM_NAME

    return list(dict.fromkeys([emd.encoder, TIMM_NAME]))


def check_imagenet(emd: EMDConfig) -> list[Finding]:
    """The preset's ImageNet start (``emd.pretrained``, :mod:`emdlib.pretrained`): a local file or folder must load
    into every network of :func:`imagenet_models` (error otherwise); ``True`` is a warning for every network whose
    weights are not in timm's local cache (they would be downloaded: offline, the run fails)."""
    from emdlib.pretrained import create_timm_model, offline_help

    weights = emd.pretrained
    if weights is False or weights is None:
        return []
    out = []
    for name in imagenet_models(emd):
        if weights is True:
            if not timm_weights_cached(name):
                out.append(Finding(WARNING, "imagenet", f"ImageNet weights for timm model {name!r} are not in the "
                                                        "local cache: the run downloads them (needs the network)",
                                   None, offline_help(name)))
            continue
        try:
            create_timm_model(name, weights, num_classes=0)
        except (FileNotFoundError, ValueError) as e:
            out.append(Finding(ERROR, "imagenet", str(e), None, offline_help(name)))
    return out


def timm_weights_cached(name: str) -> bool:
    """Whether timm's default ImageNet weights for ``name`` are on this machine already (Hugging Face hub cache, or
    torch hub's cache for weights timm fetches by URL), so that ``pretrained=True`` needs no network."""
    import torch
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in (cfg.hf_hub_filename or "model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
                return True
    if cfg.url:
        from urllib.parse import urlparse

        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name).is_file()
    return False


# -------------------------------------------------------------------------------------------------------- disk
def cache_bytes(preset: Preset, pairs: dict[str, Sequence] | None = None) -> int:
    """Upper estimate of the face cache's size in bytes (:mod:`emdlib.data.prepare`'s layout): every video of every
    split at every compression caches ``train_frames`` (train) or ``eval_frames`` (val/test) crops of
    ``crop_size``² pixels, and every fake as many masks, at the bytes per pixel of the preset's ``cache_format``
    (:data:`emdlib.data.crop_codec.BYTES_PER_PIXEL`: raw 3 per crop pixel and 1 per mask pixel; measured upper
    estimates for JPEG and PNG). ``pairs``: the split files' pairs (default: the preset's pair counts). Videos
    shorter than the frame count cache fewer frames."""
    from emdlib.data.crop_codec import BYTES_PER_PIXEL

    counts = {s: len(pairs[s]) for s in SPLITS} if pairs is not None else dict(zip(SPLITS, preset.data.pairs))
    p, d = preset.prepare, preset.data
    side = p.crop_size * p.crop_size
    crop_b, mask_b = BYTES_PER_PIXEL[p.cache_format]
    total = 0.0
    for split, n_pairs in counts.items():
        frames = p.train_frames if split == "train" else p.eval_frames
        reals = fakes = 2 * n_pairs  # a pair: two originals, two fakes per method (§B.1)
        per_comp = reals * frames * side * crop_b + len(d.methods) * fakes * frames * side * (crop_b + mask_b)
        total += per_comp * len(d.compressions)
    return int(round(total))


def check_disk(preset: Preset, cache: Path, pairs: dict[str, Sequence] | None = None) -> list[Finding]:
    """A warning when the file system of ``cache`` has less free space than :func:`cache_bytes` (skipped when
    ``prepare`` has finished there: ``summary.json`` exists)."""
    cache = Path(cache)
    if (cache / "summary.json").is_file():
        return []
    need = cache_bytes(preset, pairs)
    existing = next(p for p in (cache, *cache.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free >= need:
        return []
    p = preset.prepare
    return [Finding(WARNING, "disk", f"the face cache needs up to {_gb(need)} ({p.train_frames}/{p.eval_frames} "
                                     f"train/eval frames per video, {p.crop_size}-px crops, {p.cache_format} cache); "
                                     f"{_gb(free)} free",
                    existing, "free space there, or put the data elsewhere with --data-root DIR (a cache already "
                              "partly built needs only the rest)")]


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


__all__ = ["ERROR", "Finding", "SEVERITIES", "WARNING", "cache_bytes",
           "check_affectnet", "check_cells", "check_disk", "check_esr_weights", "check_fer_data", "check_ffpp", "check_imagenet",
           "check_study", "errors", "format_findings", "imagenet_models", "timm_weights_cached"]
