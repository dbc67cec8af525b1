"""Media files on disk: whether a path can be read, and the real reason when it cannot.

Every reader of images and videos (:mod:`emdlib.data.images`, :mod:`emdlib.data.video`) and the folder walk of
``emd detect`` go through :func:`check_readable` / :func:`os_reason`, so that a permission error is reported as
"permission denied", a symbolic-link loop as a loop and a dangling link as a dangling link — never as a corrupt
file or a missing one.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_REASONS = {
    errno.ENOENT: "no such file",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.ELOOP: "symbolic link loop (the link points, directly or through other links, back to itself)",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EIO: "input/output error (failing disk or network share?)",
    errno.ENAMETOOLONG: "file name too long",
}


def os_reason(e: OSError, path: str | os.PathLike | None = None) -> str:
    """The cause of an operating-system error in words (``permission denied``, ``symbolic link loop``, ...).

    With ``path``, a missing file that is a symbolic link is reported as a dangling link naming its target.
    """
    if e.errno == errno.ENOENT and path is not None and os.path.islink(path):
        return f"broken symbolic link (points to {os.readlink(path)}, which does not exist)"
    reason = _REASONS.get(e.errno or -1)
    if reason is None:
        reason = (e.strerror or str(e) or type(e).__name__).strip()
        reason = reason[0].lower() + reason[1:] if reason else type(e).__name__
    return reason


def check_readable(path: str | os.PathLike, error: type[Exception] = ValueError) -> os.stat_result:
    """Check that ``path`` is a non-empty regular file this process may open; return its ``os.stat`` result.

    Raises ``error(reason)`` with the real cause: ``no such file``, ``broken symbolic link (...)``,
    ``symbolic link loop (...)``, ``permission denied``, ``is a folder, not a file``, ``not a regular file (...)``
    or ``empty file (0 bytes)``. The path itself is not in the message (callers put it in front).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(os_reason(e, path)) from None
    if stat.S_ISDIR(st.st_mode):
        raise error("is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error("not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise error("empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise error(os_reason(e, path)) from None
    return st
