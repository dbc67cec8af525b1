"""A memo of the frozen FER stream's branch selection (paper Eqs. 3–5), keyed by the content of each FER input.

EMD's FER stream is frozen and in eval mode (Algorithm 1: φ is learned separately, §III-E), so the selected map of
an image is a function of its pixels alone. Training sees the same images every epoch (the only augmentation is a
horizontal flip), validation sees the same images every epoch, and the study's runs share images (seeds, Fig. 6's
nested training subsets, the pristine half of every cell): without a memo every one of those passes recomputes
``select_branch`` — about a third of an EMD training step at the ``cpu`` preset's sizes (benchmarks/fer_memo.py).

:class:`FERMemo` stores ``(fer_map (512, h, w), branch, cls)`` per image under a blake2b digest of the image's bytes
plus its shape, dtype, device, the autocast state and ``voters_only``; a batch's repeated images are read back and
only the others go through the network, together, as one batch. It is attached to a stream with :func:`memoise`
(a plain attribute of the stream, not a submodule: nothing of it enters ``state_dict()``, checkpoints or model specs,
and models rebuilt by :mod:`emdlib.registry` run without it). :meth:`emdlib.models.esr.FERStream.select_branch`
consults it; everything else about the stream is unchanged.

Same results as without the memo. On CPU, PyTorch's convolutions give an image the same bits in any batch of two or
more images but other bits in a batch of one (oneDNN takes another path for N = 1; ~1e-8 on the FER map): the memo
never computes a lone miss of a larger batch on its own — it runs it beside another image of the batch — and keeps
what batches of one computed apart from the rest (tests/test_fer_memo.py checks this bit for bit). On other devices
(cuDNN chooses algorithms by batch size) an image's results are stored per batch size and its misses go through the
network padded with the batch's other images to the caller's batch size, so an image is always computed in a batch of
the shape it would have had without the memo; there the memo saves the batches whose images all repeat (validation,
later training epochs).

Bounded: at most ``max_bytes`` of stored tensors (default 1 GiB); past it new results are computed and returned but
not stored. The memo is bypassed (computed, not stored, not counted) while the stream is in training mode or its
parameters take gradients, and it empties itself when the stream's weights change (a digest of the weights is
checked whenever a tensor of the stream was replaced or modified in place).
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from emdlib.models.esr import FERStream

log = logging.getLogger(__name__)

#: Default byte budget of one memo (stored maps and indices).
DEFAULT_MAX_BYTES = 1 << 30
_DIGEST_BYTES = 16


@dataclass
class _Entry:
    fer_map: torch.Tensor  # (512, h, w)
    branch: torch.Tensor  # () int64
    cls: torch.Tensor  # () int64

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in (self.fer_map, self.branch, self.cls))


def _row_digests(x: torch.Tensor) -> list[bytes]:
    """blake2b digest of each image's bytes (``x`` (N, ...); copied to host memory when on another device)."""
    rows = x.detach().contiguous().cpu().reshape(x.shape[0], -1).view(torch.uint8).numpy()
    return [hashlib.blake2b(r.data, digest_size=_DIGEST_BYTES).digest() for r in rows]


def _weights_digest(stream: torch.nn.Module) -> bytes:
    """blake2b over the names, dtypes, shapes and bytes of ``stream``'s state dict (parameters and buffers)."""
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for name, t in stream.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
    return h.digest()


def _tensors_version(stream: torch.nn.Module) -> tuple:
    """Cheap guard: which storage each parameter/buffer has and how often it was modified in place."""
    return tuple((t.data_ptr(), t._version) for t in (*stream.parameters(), *stream.buffers()))


class FERMemo:
    """Content-keyed memo of ``FERStream.select_branch`` (Eqs. 3–5), see the module docstring.

    Attach with :func:`memoise`; one memo may serve several streams with the same weights (e.g. the same checkpoint
    loaded for successive runs): a stream with other weights empties it first.

    Args:
        max_bytes: budget for stored tensors, bytes (≥ 0; 0 stores nothing). Raises ValueError when negative.
        batch_invariant: whether the stream gives an image the same bits in every batch of two or more images (then
            misses run in batches of ≥ 2 and results are shared across batch sizes > 1); False: per batch size, misses
            padded to the caller's batch size. None (default): True on CPU, False on other devices.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, batch_invariant: bool | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.batch_invariant = batch_invariant
        self._entries: dict[tuple, _Entry] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.not_stored = 0  # misses computed but not stored (budget spent)
        self._weights: bytes | None = None
        self._guard: tuple | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        """``{"hits", "misses", "not_stored", "entries", "bytes", "max_bytes"}`` (images, bytes)."""
        return {"hits": self.hits, "misses": self.misses, "not_stored": self.not_stored, "entries": len(self),
                "bytes": self.nbytes, "max_bytes": self.max_bytes}

    def clear(self) -> None:
        """Drop every stored result (the counts stay)."""
        self._entries.clear()
        self.nbytes = 0

    def _check_weights(self, stream: torch.nn.Module) -> None:
        """Empty the memo when ``stream``'s weights differ from those its results came from (digest recomputed only
        when another stream is seen or one of this stream's tensors was replaced or modified in place)."""
        versions = _tensors_version(stream)
        if self._guard is not None and self._guard[0]() is stream and self._guard[1] == versions:
            return
        digest = _weights_digest(stream)
        if self._weights is not None and digest != self._weights and self._entries:
            log.info("FER memo: the FER stream's weights changed; dropping %d stored results", len(self))
            self.clear()
        self._weights, self._guard = digest, (weakref.ref(stream), versions)

    def select_branch(self, stream: FERStream, x: torch.Tensor, voters_only: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``stream.compute_select_branch(x, voters_only)`` with repeated images read back.

        ``x``: (N, 3, H, W) FER input (ESR convention). Returns ``(fer_map (N, 512, h, w), branch (N,), cls (N,))``,
        the values the stream computes for ``x`` (see the module docstring for the exact sense).
        """
        compute = stream.compute_select_branch
        if stream.training or (torch.is_grad_enabled() and any(p.requires_grad for p in stream.parameters())):
            return compute(x, voters_only)
        stream._check_input(x)
        self._check_weights(stream)
        n = x.shape[0]
        dev = x.device.type
        amp = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)) if dev in ("cpu", "cuda") else None
        any_batch = dev == "cpu" if self.batch_invariant is None else self.batch_invariant
        batch = n == 1 if any_batch else n  # the batch sizes whose results may differ are kept apart
        layout = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()  # cuDNN rounds NHWC apart
        context = (tuple(x.shape[1:]), str(x.dtype), str(x.device), amp, bool(voters_only), batch, layout)
        keys = [(d, *context) for d in _row_digests(x)]
        found = [self._entries.get(k) for k in keys]
        miss = [i for i, e in enumerate(found) if e is None]
        self.hits += n - len(miss)
        self.misses += len(miss)
        if not miss:
            return tuple(torch.stack(t) for t in zip(*((e.fer_map, e.branch, e.cls) for e in found)))  # type: ignore
        rows = miss
        size = min(n, 2) if any_batch else n  # misses go through the network in a batch of at least this size
        if len(rows) < size:  # padded with other images of the batch, whose results are not used
            rows = rows + [i for i in range(n) if found[i] is not None][: size - len(rows)]
        whole = rows == list(range(n))  # every image of x goes through the network, in order
        out = compute(x if whole else x[rows], voters_only)
        for j, i in enumerate(miss):
            found[i] = entry = _Entry(out[0][j].clone(), out[1][j].clone(), out[2][j].clone())
            if keys[i] in self._entries:  # the same image twice in this batch
                continue
            if self.nbytes + entry.nbytes > self.max_bytes:
                if not self.not_stored:
                    log.info("FER memo: budget of %d bytes spent (%d results stored); further results are "
                             "computed without storing", self.max_bytes, len(self))
                self.not_stored += 1
                continue
            self._entries[keys[i]] = entry
            self.nbytes += entry.nbytes
        if whole:
            return out
        return tuple(torch.stack(t) for t in zip(*((e.fer_map, e.branch, e.cls) for e in found)))  # type: ignore


def memoise(stream: FERStream, memo: FERMemo | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> FERMemo:
    """Attach ``memo`` (a new :class:`FERMemo` of ``max_bytes`` when None) to ``stream`` and return it.

    The memo is a plain attribute (``stream.memo``): it is not a submodule, so ``state_dict()``, checkpoints and
    ``spec()`` are unchanged. Raises TypeError when ``stream`` is not a :class:`emdlib.models.esr.FERStream`.
    """
    from emdlib.models.esr import FERStream

    if not isinstance(stream, FERStream):
        raise TypeError(f"memoise needs a FERStream (ESR or SimFER), got {type(stream).__name__}")
    memo = memo if memo is not None else FERMemo(max_bytes)
    stream.memo = memo
    return memo


def unmemoise(stream: FERStream) -> FERMemo | None:
    """Detach and return ``stream``'s memo (None when it had none)."""
    memo = stream.__dict__.pop("memo", None)
    return memo

