"""Atomic file writes and small JSON helpers.

Nothing emdlib writes is ever left half-written: every writer goes to a temporary name in the destination folder
and is renamed into place (``os.replace`` is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)

#: Names :func:`atomic_path` gives its temporary files: ``.<stem>.<8 random chars>.tmp<suffix>`` (``tempfile.mkstemp``).
TEMP_NAME = re.compile(r"^\..*\.[A-Za-z0-9_]{8}\.tmp(\.[^/]*)?$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    ``suffix`` keeps the extension that some writers (ffmpeg, cv2.imwrite, np.save) need to pick a format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def is_temp_name(name: str) -> bool:
    """Whether a file name is one :func:`atomic_path` uses for its temporary files (e.g. ``.0001.k3j_x9a2.tmp.npy``)."""
    return TEMP_NAME.match(name) is not None


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporary files that a killed run of an :func:`atomic_path` writer left in ``folder``.

    Only names matching :data:`TEMP_NAME` are touched; call it when a run starts, before its own writers begin (a
    temporary file of a writer that is still running would be removed too). Returns the removed paths (sorted); a
    folder that does not exist yet has none. Files that cannot be removed are logged and kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*") if recursive else folder.glob(".*")
    removed = []
    for p in sorted(found):
        if not is_temp_name(p.name) or not p.is_file() or p.is_symlink():
            continue
        try:
            p.unlink()
        except OSError as e:
            log.warning("%s: leftover temporary file could not be removed (%s)", p, e)
            continue
        removed.append(p)
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", folder, len(removed))
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def to_json(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as JSON text, numpy scalars/arrays, paths, tuples and sets converted (what :func:`write_json` writes)."""
    return json.dumps(obj, indent=indent, default=_json_default)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars and paths are converted)."""
    return write_text(path, to_json(obj) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save one array with ``np.save`` atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(path: str | os.PathLike, frame: "pandas.DataFrame", index: bool = False) -> Path:  # noqa: F821
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=index)
    return Path(path)
