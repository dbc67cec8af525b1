"""ESR: Ensembles with Shared Representations (Siqueira et al., AAAI 2020), the FER stream of EMD (paper §III-C).

The network is a shared convolutional base followed by ``B`` independent convolutional branches (ESR-9: ``B = 9``).
Each branch ends in global average pooling, ``fc`` (512 → 8 expression logits, AffectNet order, see
:data:`emdlib.data.expressions.EXPRESSIONS`) and ``fc_dimensional`` (8 → 2: valence, arousal). The architecture is
data: :data:`BASE_CFG` and :data:`BRANCH_CFG` mirror the layer tables of reference-facts §A.1/§A.2, and module and
parameter names equal the official ones so the released state dicts load key for key
(``Net-Base-Shared_Representations.pt`` → ``ESR.base``, ``Net-Branch_{b}.pt`` → ``ESR.branches[b - 1]``).

Input convention (reference-facts §A.4): a 96×96 face crop, **BGR** channel order, values in [0, 1], no mean/std
normalisation — produce it with :func:`emdlib.data.transforms.esr_input`. Other sizes ≥ 54 px run (the maps shrink).

What EMD uses (paper Eqs. 3–5, :func:`select_branch_from_logits`): every branch votes for its arg-max class (Eq. 3),
the ensemble class is the mode of the votes (Eq. 4), and the FER feature of the image is the last-conv map
(512×6×6 for 96² input) of the voting branch with the highest softmax probability for that class (Eq. 5).

Weights: :func:`load_official_esr` (official ``.pt`` state dicts, ``weights_only=True``) and
:func:`write_official_esr` live beside the module, not inside it; our own checkpoints go through
:mod:`emdlib.registry` (:func:`emdlib.registry.save_fer_stream`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emdlib.checkpoint import load_torch_state_dict
from emdlib.io import atomic_path

log = logging.getLogger(__name__)

NUM_CLASSES = 8  # AffectNet's eight discrete expressions (reference-facts §A.2)
NUM_AFFECT = 2  # valence, arousal (reference-facts §A.6)
INPUT_SIZE = 96
INPUT_CONVENTION = {"size": INPUT_SIZE, "channels": "BGR", "range": [0.0, 1.0], "mean": [0.0] * 3, "std": [1.0] * 3}

OFFICIAL_BASE_FILE = "Net-Base-Shared_Representations.pt"
OFFICIAL_BRANCH_FILE = "Net-Branch_{}.pt"  # 1-based, as in the official repository


@dataclass(frozen=True)
class ConvSpec:
    """One ``Conv(k, stride 1) → BN → ReLU`` layer, optionally followed by ``MaxPool2d(2, 2)``."""

    out_channels: int
    kernel_size: int
    padding: int = 0
    pool: bool = False


# reference-facts §A.1: the shared base (128×20×20 for 96² input).
BASE_CFG: tuple[ConvSpec, ...] = (
    ConvSpec(64, 5),
    ConvSpec(128, 3, pool=True),
    ConvSpec(128, 3),
    ConvSpec(128, 3, pool=True),
)
# reference-facts §A.2: one convolutional branch (512×6×6 last-conv map for 96² input); conv4 is the only padded conv.
BRANCH_CFG: tuple[ConvSpec, ...] = (
    ConvSpec(128, 3),
    ConvSpec(256, 3, pool=True),
    ConvSpec(256, 3),
    ConvSpec(512, 3, padding=1),
)


def stack_output_size(size: int, specs: Sequence[ConvSpec]) -> int:
    """Spatial side after a :class:`ConvStack` (all convs stride 1)."""
    for s in specs:
        size = size + 2 * s.padding - s.kernel_size + 1
        if s.pool:
            size //= 2
    return size


class ConvStack(nn.Module):
    """``Conv → BN → ReLU [→ MaxPool 2]`` layers built from a list of :class:`ConvSpec`.

    Modules are called ``conv{i}``/``bn{i}`` (1-based) and registered convs first, then BNs, exactly like the official
    ``Base`` and ``ConvolutionalBranch``, so ``state_dict()`` has the official keys in the official order.
    ``act{i}`` (ReLU) and ``pool{i}`` carry no state; ``output_layer`` outputs the stack's map (the Grad-CAM target).
    """

    def __init__(self, in_channels: int, specs: Sequence[ConvSpec]) -> None:
        super().__init__()
        if not specs:
            raise ValueError("a ConvStack needs at least one ConvSpec")
        self.specs = tuple(specs)
        c = in_channels
        for i, s in enumerate(self.specs, 1):
            self.add_module(f"conv{i}", nn.Conv2d(c, s.out_channels, s.kernel_size, stride=1, padding=s.padding))
            c = s.out_channels
        for i, s in enumerate(self.specs, 1):
            self.add_module(f"bn{i}", nn.BatchNorm2d(s.out_channels))
        for i, s in enumerate(self.specs, 1):
            self.add_module(f"act{i}", nn.ReLU())
            if s.pool:
                self.add_module(f"pool{i}", nn.MaxPool2d(2, 2))
        self.in_channels = in_channels
        self.out_channels = c

    @property
    def output_layer(self) -> nn.Module:
        """The module whose output is the stack's output (last ReLU, or its pool): where Grad-CAM hooks."""
        n = len(self.specs)
        return getattr(self, f"pool{n}" if self.specs[-1].pool else f"act{n}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, s in enumerate(self.specs, 1):
            x = getattr(self, f"act{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if s.pool:
                x = getattr(self, f"pool{i}")(x)
        return x


class Base(ConvStack):
    """The shared representations of ESR (reference-facts §A.1; ``Net-Base-Shared_Representations.pt``)."""

    def __init__(self, in_channels: int = 3, specs: Sequence[ConvSpec] = BASE_CFG) -> None:
        super().__init__(in_channels, specs)


class ConvolutionalBranch(ConvStack):
    """One ensemble branch (reference-facts §A.2; ``Net-Branch_{b}.pt``): conv stack → GAP → ``fc`` → ``fc_dimensional``."""

    def __init__(
        self,
        in_channels: int = 128,
        specs: Sequence[ConvSpec] = BRANCH_CFG,
        num_classes: int = NUM_CLASSES,
        num_affect: int = NUM_AFFECT,
    ) -> None:
        super().__init__(in_channels, specs)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.out_channels, num_classes)
        self.fc_dimensional = nn.Linear(num_classes, num_affect)

    def classify(self, fmap: torch.Tensor) -> torch.Tensor:
        """Last conv map ``(N, 512, h, w)`` → expression logits ``(N, 8)`` (no softmax, as the official model)."""
        return self.fc(self.global_pool(fmap).flatten(1))

    def affect(self, logits: torch.Tensor) -> torch.Tensor:
        """Expression logits → (valence, arousal), with the ReLU the official inference model puts between them."""
        return self.fc_dimensional(F.relu(logits))


# --------------------------------------------------------------------------------------------------------------
# Eqs. 3–5 as pure functions over logits
# --------------------------------------------------------------------------------------------------------------


def _check_logits(logits: torch.Tensor) -> None:
    if logits.ndim != 3:
        raise ValueError(f"expected branch logits of shape (N, B, C), got {tuple(logits.shape)}")


def vote_histogram(logits: torch.Tensor) -> torch.Tensor:
    """Votes per class ``(N, C)``: each branch votes for its arg-max class (Eq. 3; ties → lowest class index)."""
    _check_logits(logits)
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).sum(1)


def ensemble_vote_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """The ensemble class ``(N,)``: the mode of the branch votes (Eq. 4; official majority vote, reference-facts §A.7).

    Ties between equally frequent classes go to the **lowest class index**, as ``numpy.argmax`` of the vote
    histogram in the official ``cvision._predict`` (``torch.argmax`` also returns the first maximum).
    """
    return vote_histogram(logits).argmax(-1)


def select_branch_from_logits(logits: torch.Tensor, voters_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 3–5 on branch logits ``(N, B, C)`` → ``(branch (N,), cls (N,))``, batched.

    ``cls`` is the modal class of the branch votes (Eqs. 3–4, ties → lowest class index). ``branch`` is the branch
    with the highest softmax probability for ``cls`` (Eq. 5; softmax over each branch's ``fc`` logits, reference-facts
    §A.7). With ``voters_only`` (default, the EMD description "among the branches that voted for it") only branches
    whose own arg-max is ``cls`` compete; ``voters_only=False`` takes Eq. 5 literally (all branches). Ties in
    probability go to the lowest branch index.
    """
    _check_logits(logits)
    votes = logits.argmax(-1)  # (N, B), Eq. 3
    cls = F.one_hot(votes, logits.shape[-1]).sum(1).argmax(-1)  # (N,), Eq. 4
    prob = logits.detach().float().softmax(-1)
    p_cls = prob.gather(-1, cls[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(-1)  # (N, B)
    if voters_only:
        p_cls = p_cls.masked_fill(votes != cls[:, None], -1.0)  # the modal class has at least one voter
    return p_cls.argmax(-1), cls


# --------------------------------------------------------------------------------------------------------------
# The FER-stream interface shared by ESR and SimFER
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureInfo:
    """Declared feature of a FER stream (timm style): channels, reduction and the module that outputs it."""

    num_chs: int
    reduction: int
    module: str


class FERStream(nn.Module):
    """What EMD needs from a FER model: per-branch last-conv maps and logits, the vote, and Eqs. 3–5.

    Subclasses implement :meth:`branch_outputs` and :meth:`cam_layers`. A single-branch model (SimFER) is the
    ``B = 1`` case: its vote is its arg-max and :meth:`select_branch` returns branch 0.
    """

    num_classes: int = NUM_CLASSES
    feature_channels: int = 512
    input_convention: dict = INPUT_CONVENTION

    @property
    def num_branches(self) -> int:
        raise NotImplementedError

    def branch_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, 3, H, W) → (last-conv maps ``(N, B, 512, h, w)``, logits ``(N, B, C)``) in one pass."""
        raise NotImplementedError

    def cam_layers(self) -> list[nn.Module]:
        """One module per branch whose output is that branch's last conv map (Grad-CAM target)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expression logits of every branch ``(N, B, C)``."""
        return self.branch_outputs(x)[1]

    def branch_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Last-conv map of every branch ``(N, B, 512, h, w)`` (Eq. 2: ``FF_b = E_b(Conv(X))``)."""
        return self.branch_outputs(x)[0]

    def ensemble_vote(self, x: torch.Tensor) -> torch.Tensor:
        """Ensemble class ``(N,)`` by majority vote (Eq. 4, ties → lowest class index)."""
        return ensemble_vote_from_logits(self(x))

    #: A :class:`emdlib.models.fer_memo.FERMemo` attached by :func:`emdlib.models.fer_memo.memoise` (a plain
    #: attribute, not a submodule: never in the state dict), or None.
    memo = None

    def select_branch(self, x: torch.Tensor, voters_only: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eqs. 3–5: ``(fer_map (N, 512, h, w), branch (N,), cls (N,))`` — the FER feature EMD concatenates.

        With a memo attached, images it has seen are read back from it and only the others pass through the network.
        """
        if self.memo is not None:
            return self.memo.select_branch(self, x, voters_only)
        return self.compute_select_branch(x, voters_only)

    def compute_select_branch(self, x: torch.Tensor, voters_only: bool = True
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`select_branch` through the network, never the memo."""
        maps, logits = self.branch_outputs(x)
        branch, cls = select_branch_from_logits(logits, voters_only=voters_only)
        fer_map = maps[torch.arange(maps.shape[0], device=maps.device), branch]
        return fer_map, branch, cls

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FER input must be (N, 3, H, W) BGR in [0, 1] (transforms.esr_input); got {tuple(x.shape)}")


class ESR(FERStream):
    """ESR with a shared :class:`Base` and ``num_branches`` :class:`ConvolutionalBranch` es (ESR-9: 9).

    ``forward(x) -> (N, B, 8)`` logits; ``branch_maps(x) -> (N, B, 512, h, w)``; ``select_branch(x)`` (Eqs. 3–5);
    ``ensemble_vote(x)``; ``affect(x) -> (N, B, 2)`` (valence, arousal). ``base_cfg`` / ``branch_cfg`` default to the
    official configuration; only ``num_branches`` changes between presets.
    """

    def __init__(
        self,
        num_branches: int = 9,
        num_classes: int = NUM_CLASSES,
        base_cfg: Sequence[ConvSpec] = BASE_CFG,
        branch_cfg: Sequence[ConvSpec] = BRANCH_CFG,
    ) -> None:
        super().__init__()
        if num_branches < 1:
            raise ValueError(f"ESR needs at least one branch, got num_branches={num_branches}")
        self.num_classes = num_classes
        self.base_cfg = tuple(base_cfg)
        self.branch_cfg = tuple(branch_cfg)
        self.base = Base(3, self.base_cfg)
        self.branches = nn.ModuleList()
        for _ in range(num_branches):
            self.add_branch()
        self.feature_channels = self.branches[0].out_channels
        self.feature_info = [
            FeatureInfo(self.base.out_channels, 4, "base"),
            *(FeatureInfo(self.feature_channels, 8, f"branches.{b}.act{len(self.branch_cfg)}") for b in range(num_branches)),
        ]

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def add_branch(self) -> ConvolutionalBranch:
        """Append a freshly initialised branch (the official branch-growing schedule, reference-facts §A.5)."""
        branch = ConvolutionalBranch(self.base.out_channels, self.branch_cfg, self.num_classes)
        p = next(self.base.parameters())
        self.branches.append(branch.to(device=p.device, dtype=p.dtype))
        return branch

    def branch_outputs(
        self, x: torch.Tensor, branches: Iterable[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: maps ``(N, B', 512, h, w)`` and logits ``(N, B', C)`` of ``branches`` (default: all)."""
        self._check_input(x)
        shared = self.base(x)
        idx = range(self.num_branches) if branches is None else list(branches)
        maps = [self.branches[b](shared) for b in idx]
        logits = [self.branches[b].classify(m) for b, m in zip(idx, maps)]
        return torch.stack(maps, 1), torch.stack(logits, 1)

    def affect(self, x: torch.Tensor) -> torch.Tensor:
        """Valence and arousal of every branch ``(N, B, 2)`` (reference-facts §A.6; column 0 valence, 1 arousal)."""
        logits = self(x)
        return torch.stack([br.affect(logits[:, b]) for b, br in enumerate(self.branches)], 1)

    def cam_layers(self) -> list[nn.Module]:
        return [br.output_layer for br in self.branches]

    def spec(self) -> dict:
        """The registry entry that rebuilds this network (:mod:`emdlib.registry`; default layer configuration)."""
        return {"name": "esr", "kwargs": {"num_branches": self.num_branches, "num_classes": self.num_classes}}

    def map_size(self, input_size: int = INPUT_SIZE) -> int:
        """Side of the last conv map for a square input (6 for 96², reference-facts §A.2)."""
        return stack_output_size(stack_output_size(input_size, self.base_cfg), self.branch_cfg)


# --------------------------------------------------------------------------------------------------------------
# Official weights (outside the module, as timm's build_model_with_cfg)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class OfficialLoadReport:
    """What :func:`load_official_esr` loaded: the base file, then ``Net-Branch_{1..B}.pt`` in order."""

    loaded: list[Path] = field(default_factory=list)


def _load_into(module: nn.Module, path: Path) -> None:
    """Strict load of one official file into ``module``: key and shape errors name the file."""
    state = load_torch_state_dict(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{path}: state dict does not match {type(module).__name__} "
            f"(missing keys: {missing or 'none'}; unexpected keys: {unexpected or 'none'})"
        )
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {type(module).__name__}: {'; '.join(bad)}")
    module.load_state_dict(state, strict=True)


def official_esr_files(folder: str | os.PathLike, num_branches: int = 9) -> list[Path]:
    """The official files a ``num_branches``-branch ESR loads from ``folder``: the base, then ``Net-Branch_{1..B}.pt``.

    Raises FileNotFoundError when ``folder`` is not a directory, or naming every expected file that is absent (an
    ESR with a branch left at random initialisation would vote with noise, so a partial folder is refused).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: ESR weights folder not found")
    files = [folder / OFFICIAL_BASE_FILE] + [folder / OFFICIAL_BRANCH_FILE.format(b) for b in range(1, num_branches + 1)]
    absent = [p for p in files if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"{folder}: official ESR-{num_branches} file(s) missing: {', '.join(p.name for p in absent)} "
            f"(the folder must hold {OFFICIAL_BASE_FILE} and {OFFICIAL_BRANCH_FILE.format(1)} … "
            f"{OFFICIAL_BRANCH_FILE.format(num_branches)} from the ESR authors' repository)"
        )
    return files


def load_official_esr(model: ESR, folder: str | os.PathLike) -> OfficialLoadReport:
    """Load the official ESR-9 state dicts from ``folder`` into ``model`` (reference-facts §A.3).

    ``Net-Base-Shared_Representations.pt`` goes to ``model.base`` and ``Net-Branch_{b}.pt`` to
    ``model.branches[b - 1]`` for ``b = 1..model.num_branches``; every one of them is required
    (:func:`official_esr_files`: FileNotFoundError naming each absent file, before anything is loaded). Every file is
    read with ``weights_only=True`` and must match its module key for key and shape for shape; any mismatch raises
    ``ValueError`` naming the file.
    """
    files = official_esr_files(folder, model.num_branches)
    report = OfficialLoadReport()
    for path, module in zip(files, [model.base, *model.branches]):
        _load_into(module, path)
        report.loaded.append(path)
    log.info("official ESR: loaded %s", ", ".join(p.name for p in report.loaded))
    return report


def official_state_dict(module: Base | ConvolutionalBranch) -> "OrderedDict[str, torch.Tensor]":
    """``module``'s tensors in the official key layout and order (conv1–4, bn1–4[, fc, fc_dimensional])."""
    return OrderedDict((k, v.detach().to("cpu").clone()) for k, v in module.state_dict().items())


def write_official_esr(model: ESR, folder: str | os.PathLike, branches: Iterable[int] | None = None) -> list[Path]:
    """Write ``model`` as official-layout ``.pt`` state dicts (base + ``Net-Branch_{b}.pt``), atomically.

    ``branches`` are 0-based indices (default: all). The files load with ``torch.load(weights_only=True)`` and with
    :func:`load_official_esr` — used for round-trip tests and for handing weights to the official code.
    """
    folder = Path(folder)
    written = []
    items = [(folder / OFFICIAL_BASE_FILE, model.base)]
    idx = range(model.num_branches) if branches is None else branches
    items += [(folder / OFFICIAL_BRANCH_FILE.format(b + 1), model.branches[b]) for b in idx]
    for path, module in items:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(official_state_dict(module), tmp)
        written.append(path)
    return written
