"""The world writer: pristine clips and their forged manipulations in the official FF++ folder layout.

:func:`write_world` is what synth (:func:`emdlib.data.synth.build_synth_world`) and the photo world
(:func:`emdlib.data.photos.build_faces_world`) end with, so every data world reaches ``prepare`` in the same layout
(design.md "One data path"; reference-facts §B.1–B.3): ``original_sequences/youtube/<comp>/videos/<id>.mp4``,
``manipulated_sequences/<Method>/<comp>/videos/<t>_<s>.mp4``, lossless
``manipulated_sequences/<Method>/masks/videos/<t>_<s>.mp4`` and ``splits/{train,val,test}.json``. The paths come
from :mod:`emdlib.data.ffpp`, which reads the same layout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from emdlib.data.clip import Clip
from emdlib.data.ffpp import ORIGINAL, SPLITS, mask_path, split_file, video_path
from emdlib.data.forge import METHOD_FUNCTIONS, fake_frames, video_params
from emdlib.data.video import write_video
from emdlib.io import _json_default, read_json, write_json

log = logging.getLogger(__name__)

#: FF++ compression names -> libx264 crf (reference-facts §B.2: c23 = crf 23, c40 = crf 40, raw = lossless)
CRF = {"c23": 23, "c40": 40, "raw": None}


def _write_json_if_changed(path: Path, obj: Any) -> bool:
    if path.is_file():
        try:
            if read_json(path) == json_roundtrip(obj):
                return False
        except ValueError:
            pass
    write_json(path, obj)
    return True


def json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists), to compare with a file's content."""
    return json.loads(json.dumps(obj, default=_json_default))


def named_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and names (crc32), so that each video draws its own stream."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(zlib.crc32(n.encode()) for n in names)])


def _encode(path: Path, frames: np.ndarray, comp: str) -> None:
    crf = CRF[comp]
    write_video(path, frames, crf=crf if crf is not None else 0, lossless=crf is None)


def write_world(
    out_root: Path,
    clips: Mapping[str, Clip],
    pairs: Mapping[str, Sequence[tuple[str, str]]],
    cfg: Any,
    seed: int,
    *,
    sources: Mapping[str, Mapping[str, str]] | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Write pristine clips and their manipulations in the official FF++ layout (reference-facts §B.1–B.3).

    For every split pair ``(a, b)``: the originals ``a`` and ``b`` at every compression in ``cfg.compressions``
    (c23 = crf 23, c40 = crf 40, raw = lossless), and for each method in ``cfg.methods`` the fakes ``a_b`` (target
    ``a``, source ``b``) and ``b_a`` at every compression plus a lossless mask video. Face2Face and NeuralTextures take
    the expression of frame ``i`` of the source clip (cycled), Deepfakes its face. ``sources`` optionally overrides
    the source clip of a fake per method (``{"Deepfakes": {"000_001": "002"}}``, used by the paired photo world,
    where a person's own other photo drives the expression but the identity must come from another person).
    Writes ``splits/{train,val,test}.json`` (lists of ``[a, b]``) and ``world.json`` (counts, config, seed, the
    actual sources, plus ``extra``). Resumable: outputs that exist are skipped (every write is atomic), so a second
    run writes nothing. Returns a summary with what was written and the encoding speed.
    """
    out_root = Path(out_root)
    methods = tuple(cfg.methods)
    comps = tuple(cfg.compressions)
    for c in comps:
        if c not in CRF:
            raise ValueError(f"unknown compression {c!r}; choose from {sorted(CRF)}")
    for m in methods:
        if m not in METHOD_FUNCTIONS:
            raise ValueError(f"unknown manipulation method {m!r}; choose one of {sorted(METHOD_FUNCTIONS)}")
    sources = {m: dict(v) for m, v in (sources or {}).items()}
    split_pairs = {s: [(str(a), str(b)) for a, b in pairs.get(s, [])] for s in SPLITS}
    unknown = set(pairs) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected {SPLITS}")
    seen: dict[str, str] = {}
    for s, ps in split_pairs.items():
        for a, b in ps:
            if a == b:
                raise ValueError(f"split {s}: pair ({a}, {b}) pairs a video with itself")
            for v in (a, b):
                if v in seen:
                    raise ValueError(f"id {v} appears twice in the splits ({seen[v]} and {s}); FF++ ids are disjoint")
                seen[v] = s
    needed = set(seen) | {src for m in sources.values() for src in m.values()}
    missing = sorted(v for v in needed if v not in clips)
    if missing:
        raise ValueError(f"{len(missing)} id(s) in the splits have no clip: {missing[:10]}")

    for s in SPLITS:
        _write_json_if_changed(split_file(out_root / "splits", s), [list(p) for p in split_pairs[s]])

    reals = sorted(seen)
    fakes: list[tuple[str, str, str, str]] = []  # (method, name, target, source)
    for m in methods:
        for s in SPLITS:
            for a, b in split_pairs[s]:
                for t, src in ((a, b), (b, a)):
                    name = f"{t}_{src}"
                    fakes.append((m, name, t, sources.get(m, {}).get(name, src)))

    stats = {"videos_written": 0, "videos_skipped": 0, "frames_encoded": 0, "encode_s": 0.0, "manipulate_s": 0.0}
    frame_counts: dict[str, int] = {}

    def encode(path: Path, frames: np.ndarray, comp: str) -> None:
        t0 = time.perf_counter()
        _encode(path, frames, comp)
        stats["encode_s"] += time.perf_counter() - t0
        stats["frames_encoded"] += len(frames)
        stats["videos_written"] += 1

    todo = [("original", v, v, v) for v in reals] + fakes
    bar = tqdm(todo, desc="forge: writing FF++ layout", unit="video", disable=not progress)
    for method, name, target, source in bar:
        if method == "original":
            outs = [(video_path(out_root, ORIGINAL, c, name), c) for c in comps]
        else:
            outs = [(video_path(out_root, method, c, name), c) for c in comps]
            outs.append((mask_path(out_root, method, name), "mask"))
        frame_counts[f"{method}/{name}"] = len(clips[target])
        pending = [(p, c) for p, c in outs if not p.is_file()]
        stats["videos_skipped"] += len(outs) - len(pending)
        if not pending:
            continue
        if method == "original":
            for p, c in pending:
                encode(p, clips[name].frames, c)
            continue
        t0 = time.perf_counter()
        params = video_params(method, named_rng(seed, method, name))
        frames, masks = fake_frames(method, clips[target], clips[source], params)
        stats["manipulate_s"] += time.perf_counter() - t0
        for p, c in pending:
            if c == "mask":
                t1 = time.perf_counter()
                write_video(p, masks, lossless=True)
                stats["encode_s"] += time.perf_counter() - t1
                stats["frames_encoded"] += len(masks)
                stats["videos_written"] += 1
            else:
                encode(p, frames, c)

    overridden = {m: {n: s for (mm, n, t, s) in fakes if mm == m and s != n.split("_", 1)[1]} for m in methods}
    counts = {"original": len(reals), **{m: sum(1 for f in fakes if f[0] == m) for m in methods}}
    world = {
        "world": getattr(cfg, "world", ""),
        "seed": int(seed),
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg)),
        "methods": list(methods),
        "compressions": list(comps),
        "pairs": {s: len(split_pairs[s]) for s in SPLITS},
        "counts": counts,
        "frames": {"total_per_compression": int(sum(frame_counts.values())),
                   "per_video": sorted(set(frame_counts.values()))},
        "sources": {m: o for m, o in overridden.items() if o},
        **dict(extra or {}),
    }
    _write_json_if_changed(out_root / "world.json", world)
    fps = stats["frames_encoded"] / stats["encode_s"] if stats["encode_s"] > 0 else None
    summary = {
        "root": str(out_root),
        **{k: world[k] for k in ("world", "seed", "pairs", "counts")},
        "videos_written": stats["videos_written"],
        "videos_skipped": stats["videos_skipped"],
        "frames_encoded": stats["frames_encoded"],
        "encode_fps": round(fps, 1) if fps else None,
        "manipulate_s": round(stats["manipulate_s"], 2),
        "encode_s": round(stats["encode_s"], 2),
    }
    log.info("forge: %s", summary)
    return summary
