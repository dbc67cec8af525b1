"""Torch datasets over the face cache written by :mod:`emdlib.data.prepare` (design.md "One data path").

:class:`ManipulationDataset` serves the manipulation-detection task of the paper (§IV-A, Eq. 8): face crops of one
split, the fakes of the chosen methods and the pristine frames of the same split and compressions, each with its
binary manipulation mask (all zero for reals; reference-facts §B.6) and the 96×96 BGR input of the FER stream
(reference-facts §A.4). Arrays are memory-mapped from the cache; nothing is decoded from video or JPEG here.

:class:`FlipSampler` draws the training flips in the main process (``emd.flip_rng = "sampler"``), so the items of an
epoch do not depend on which DataLoader worker loads them.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from emdlib.data.crop_codec import EncodedCrops
from emdlib.data.ffpp import ORIGINAL, SPLITS, check_compression, check_method, target_id
from emdlib.data.prepare import cache_format, entry_paths, read_manifest
from emdlib.data.transforms import esr_input, to_tensor, xception_input
from emdlib.io import read_json

log = logging.getLogger(__name__)


class ManipulationDataset(Dataset):
    """Cached face crops of ``split`` for ``methods`` × ``compressions`` plus the pristine crops of the same split and
    compressions.

    Items (contracts.md): ``image`` float (3, S, S) RGB ``(x - 0.5) / 0.5`` at ``image_size``; ``fer_image`` float
    (3, 96, 96) BGR in [0, 1] (ESR input, made from the cached crop); ``mask`` float (1, S, S) in {0, 1}, resized
    nearest; ``label`` long, 1 = fake; ``method`` (``"original"`` for reals); ``compression``; ``video``; ``frame``
    (index in the video). Only manifest rows whose status is in ``statuses`` (default: ``ok``) are used.

    An item is read by an ``int`` index or by an ``(index, flip)`` pair. A pair (what :class:`FlipSampler` yields)
    flips image, mask and FER input horizontally together exactly when ``flip`` is true, drawing nothing. An ``int``
    with ``augment=True`` flips them with probability 0.5 drawn from the GLOBAL torch RNG of the process that loads
    the item (``emd.flip_rng = "global"``, the committed cpu results): reproducible for a seeded process and a fixed
    number of DataLoader workers, but not across numbers of workers. An ``int`` with ``augment=False`` never flips.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        split: str,
        methods: Sequence[str],
        compressions: Sequence[str],
        image_size: int,
        augment: bool = False,
        statuses: Sequence[str] = ("ok",),
    ) -> None:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.methods = tuple(check_method(m) for m in methods if m != ORIGINAL)
        self.compressions = tuple(check_compression(c) for c in compressions)
        self.image_size = int(image_size)
        self.augment = bool(augment)
        self.cache_format = cache_format(self.cache_dir)
        wanted = {ORIGINAL, *self.methods}
        rows = read_manifest(self.cache_dir)
        self.samples: list[tuple[str, str, str, int, int]] = [
            (r["method"], r["compression"], r["video"], r["frame"], r["row"])
            for r in rows
            if r["split"] == split and r["method"] in wanted and r["compression"] in self.compressions
            and r["status"] in statuses and r["row"] is not None and r["row"] >= 0
        ]
        if not self.samples:
            log.warning("%s: no %s frames for split=%s methods=%s compressions=%s", self.cache_dir,
                        "/".join(statuses), split, list(self.methods), list(self.compressions))
        self._arrays: dict[tuple[str, str, str, str], np.ndarray] = {}

    # ---- views
    def _with_samples(self, samples: list[tuple[str, str, str, int, int]]) -> "ManipulationDataset":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.samples = samples
        new._arrays = {}
        return new

    def subset_videos(self, n: int, seed: int = 0) -> "ManipulationDataset":
        """The frames of ``n`` pristine videos and of the fakes made from them (paper Fig. 6, training-set size).

        Pristine ids are ordered by a seeded permutation and the first ``n`` kept, so for one seed the subsets are
        nested as ``n`` grows; a fake ``<t>_<s>`` is kept when its target ``t`` is, i.e. ``n`` real and (up to)
        ``n`` fake videos per method and compression.
        """
        targets = sorted({target_id(v) for _, _, v, _, _ in self.samples})
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        order = np.random.default_rng(seed).permutation(len(targets))
        keep = {targets[i] for i in order[:n]}
        if n > len(targets):
            log.warning("subset_videos(%d): only %d pristine videos in %s/%s", n, len(targets), self.cache_dir, self.split)
        return self._with_samples([s for s in self.samples if target_id(s[2]) in keep])

    # ---- class balance
    @property
    def labels(self) -> np.ndarray:
        """Label of every item (1 = fake, 0 = real), int64."""
        return np.array([0 if m == ORIGINAL else 1 for m, *_ in self.samples], dtype=np.int64)

    def class_counts(self) -> dict[int, int]:
        """``{0: real frames, 1: fake frames}``."""
        c = Counter(self.labels.tolist())
        return {0: c.get(0, 0), 1: c.get(1, 0)}

    def require_both_classes(self) -> None:
        """Raise ValueError unless the set holds real *and* fake frames: a one-class set trains a detector that
        answers one class and scores a meaningless accuracy (1.0 on reals only) and no AUC. The message names the
        split, methods and compressions, the counts, and the cache manifest's statuses of this set's unusable rows
        (e.g. ``mask_missing`` when FF++'s mask videos were not downloaded), so that the fix is clear."""
        counts = self.class_counts()
        missing = [name for label, name in ((0, "real"), (1, "fake")) if not counts[label]]
        if not missing:
            return
        wanted = {ORIGINAL, *self.methods}
        unusable = Counter(
            (r["method"] if r["method"] == ORIGINAL else "fake", r["status"]) for r in read_manifest(self.cache_dir)
            if r["split"] == self.split and r["method"] in wanted and r["compression"] in self.compressions
            and r["status"] != "ok")
        why = ", ".join(f"{n} {kind} rows {status}" for (kind, status), n in sorted(unusable.items())) or "none"
        raise ValueError(
            f"{self.split} set of {'/'.join(self.methods)} {'/'.join(self.compressions)} has no "
            f"{' and no '.join(missing)} frames ({counts[0]} real, {counts[1]} fake): a detector needs both. "
            f"Unusable rows in {self.cache_dir / 'manifest.csv'}: {why} (`emd check` says what the FF++ copy lacks)")

    def sample_weights(self) -> torch.Tensor:
        """Per-item weights inverse to class frequency, for ``WeightedRandomSampler`` (balanced real/fake draws)."""
        labels = self.labels
        counts = np.bincount(labels, minlength=2).astype(np.float64)
        w = np.where(counts[labels] > 0, 1.0 / np.maximum(counts[labels], 1), 0.0)
        return torch.from_numpy(w)

    @property
    def videos(self) -> list[tuple[str, str, str]]:
        """Distinct ``(method, compression, video)`` in the dataset."""
        return sorted({(m, c, v) for m, c, v, _, _ in self.samples})

    # ---- items
    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        c = self.class_counts()
        return (f"ManipulationDataset({str(self.cache_dir)!r}, split={self.split!r}, methods={list(self.methods)}, "
                f"compressions={list(self.compressions)}, image_size={self.image_size}, real={c[0]}, fake={c[1]})")

    def _array(self, comp: str, method: str, video: str, kind: str) -> np.ndarray:
        key = (comp, method, video, kind)
        arr = self._arrays.get(key)
        if arr is None:
            paths = entry_paths(self.cache_dir, comp, method, video, self.cache_format)
            path = paths[kind]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: cache entry missing (manifest and cache disagree; rerun prepare)")
            arr = np.load(path, mmap_mode="r")
            if self.cache_format != "npy":
                offsets = read_json(paths["meta"]).get("crop_offsets" if kind == "crops" else "mask_offsets", [])
                arr = EncodedCrops(arr, offsets, str(path), mask=kind == "masks")
            self._arrays[key] = arr
        return arr

    def __getitem__(self, index: int | tuple[int, bool]) -> dict[str, Any]:
        """The item of the class docstring; ``index`` an ``int`` or an ``(index, flip)`` pair. Raises IndexError
        for an index out of range, FileNotFoundError when the cache lacks the item's entry."""
        if isinstance(index, tuple):
            index, flip = int(index[0]), bool(index[1])
        else:
            flip = self.augment and torch.rand(()).item() < 0.5  # no draw without augment
        method, comp, video, frame, row = self.samples[index]
        fake = method != ORIGINAL
        crop = np.array(self._array(comp, method, video, "crops")[row])  # copy: the memory map is read-only
        mask = np.array(self._array(comp, method, video, "masks")[row]) if fake else np.zeros(crop.shape[:2], np.uint8)
        if flip:
            crop, mask = np.ascontiguousarray(crop[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        rgb01 = to_tensor(crop)
        s = self.image_size
        image = rgb01
        if image.shape[-2:] != (s, s):
            image = F.interpolate(image[None], size=(s, s), mode="bilinear", align_corners=False,
                                  antialias=image.shape[-1] > s)[0]
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).float()[None]
        if mask_t.shape[-2:] != (s, s):
            mask_t = F.interpolate(mask_t[None], size=(s, s), mode="nearest")[0]
        return {
            "image": xception_input(image),
            "fer_image": esr_input(rgb01),
            "mask": mask_t,
            "label": torch.tensor(int(fake), dtype=torch.long),
            "method": method,
            "compression": comp,
            "video": video,
            "frame": int(frame),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # memory maps are reopened in each DataLoader worker, never pickled
        return state


class FlipSampler(Sampler[tuple[int, bool]]):
    """``(index, flip)`` pairs for :class:`ManipulationDataset`: the indices of ``base`` (e.g. a
    ``DistributedSampler``, which shuffles by ``set_epoch``), each with a horizontal-flip decision made here, in the
    main process.

    The flips of epoch ``e`` are one Bernoulli(``p``) draw per dataset index (``size`` of them) from a numpy
    ``Generator`` seeded with ``(seed, e)`` (a ``SeedSequence``: a stream of its own, apart from the global RNGs
    that :func:`emdlib.train.fit` re-seeds); an item's flip depends on ``(seed, epoch, index)`` only. So an epoch's
    items are the same whatever the number of DataLoader workers (which then hold no RNG that matters and may
    persist across epochs), whatever the number of data-parallel processes sharding ``base`` (every rank draws the
    same flips), and after a resume. Iterating twice in an epoch yields the same pairs. ``set_epoch(e)`` is passed on
    to ``base`` when it has one. Horizontal flips with p = 0.5 are the training augmentation of the study (deviation
    ``flips``; ``Recipe.augments``).

    Raises ValueError for a negative ``seed`` or ``size``, or ``p`` outside [0, 1].
    """

    def __init__(self, base: Sampler[int], size: int, seed: int, p: float = 0.5) -> None:
        if size < 0 or seed < 0:
            raise ValueError(f"FlipSampler: size {size} and seed {seed} must be >= 0")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"FlipSampler: flip probability {p} is not in [0, 1]")
        self.base, self.size, self.seed, self.p, self.epoch = base, int(size), int(seed), float(p), 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s flips (and order: ``base.set_epoch``) from the next iteration on."""
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def flips(self) -> np.ndarray:
        """This epoch's flip decision for every dataset index: bool array of shape ``(size,)``."""
        return np.random.default_rng((self.seed, self.epoch)).random(self.size) < self.p

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        flips = self.flips()
        for i in self.base:
            yield int(i), bool(flips[i])

    def __len__(self) -> int:
        return len(self.base)
