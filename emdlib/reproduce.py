"""``emd reproduce``: run the numbered notebooks in order with papermill (the whole study for one preset).

The study is opened once (:meth:`emdlib.study.Study.open`) and its parameters (:data:`emdlib.study.STUDY_PARAMETERS`:
``preset``, ``data_root``, ``results_root`` and the study's overrides) go to every notebook's ``parameters`` cell, so
each notebook reopens the same study; executed copies go to ``results/<preset>/notebooks/``. Notebooks are stored
without outputs; only the executed copies carry them. Notebook 00 is the data stage and 01 the FER-stream stage;
when ``only`` leaves them out, they are ensured here first (:func:`emdlib.study.ensure_stages`).

Extra parameters (``emd reproduce -p NAME VALUE``) are checked against what the notebooks being run declare in their
``parameters`` cell (papermill's parameter inference, :func:`papermill.inspect_notebook`), before any notebook runs:

* only declared names are accepted (papermill pastes names into code verbatim; a name is never anything but a
  declared Python identifier);
* a value is typed by the declaration: the annotation or ``# type:`` comment when there is one
  (``ffpp_root = None  # type: Optional[str]``), else the type of the default (``seed = 0`` is an int). ``str``
  values are never parsed (a folder named ``2024`` stays ``"2024"``); ``int``, ``float``, ``bool``, ``None`` and
  ``list``/``dict`` values are parsed (JSON or Python literals, never evaluated as code) and checked. A parameter
  whose default is ``None`` without a declared type takes the text as a string (``None``/``null`` → None; a
  ``[...]``/``{...}`` literal → list/dict).

A notebook that fails raises :class:`NotebookError`, whose message is one line: notebook, cell, exception type and
message, and the path of the partly executed copy.
"""

from __future__ import annotations

import ast
import io
import json
import keyword
import shlex
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from emdlib.io import read_json, write_json
from emdlib.presets import parse_setting
from emdlib.study import PATH_SETTINGS, STUDY_OVERRIDES, STUDY_PATHS, Study, ensure_stages

log = logging.getLogger(__name__)

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: Parameters every notebook gets from ``reproduce`` itself (``--preset``, ``--data-root``, ``--results``).
BASE_PARAMETERS: tuple[str, ...] = ("preset", "data_root", "results_root")
#: Types a parameter declaration may name (``Optional[...]`` / ``List[...]`` spellings included).
SCALAR_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
CONTAINER_TYPES = {"list": list, "dict": dict, "tuple": tuple}
UNSUPPORTED = "unsupported"


class ParameterError(ValueError):
    """A ``-p NAME VALUE`` that the notebooks do not declare, or whose value does not have the declared type."""


class NotebookError(RuntimeError):
    """A notebook raised: ``str(e)`` is one line naming the notebook, the cell, the error and the executed copy."""

    def __init__(self, notebook: str, output: Path, ename: str, evalue: str, cell: int | None = None,
                 cells: int | None = None, exec_count: int | None = None, first_line: str = "") -> None:
        self.notebook, self.output, self.ename, self.evalue = notebook, Path(output), ename, evalue
        self.cell, self.cells, self.exec_count, self.first_line = cell, cells, exec_count, first_line
        where = ""
        if cell is not None:
            where = f" in cell {cell}" + (f" of {cells}" if cells else "")
            details = [f"In [{exec_count}]" if exec_count is not None else "", repr(first_line) if first_line else ""]
            where += f" ({', '.join(d for d in details if d)})" if any(details) else ""
        message = _one_line(evalue)
        super().__init__(f"{notebook} failed{where}: {ename}{': ' + message if message else ''}; "
                         f"partly executed copy: {output}")


@dataclass(frozen=True)
class DeclaredType:
    """A parameter's declared type: ``base`` (str/int/float/bool/list/dict/tuple, or ``any`` when undeclared),
    ``nullable`` (``Optional[...]`` or a ``None`` default with a declared type), ``item`` (``list[int]`` → int)."""

    base: str
    nullable: bool = False
    item: str | None = None

    def __str__(self) -> str:
        if self.base == UNSUPPORTED:
            return str(self.item)
        text = self.base if self.item is None else f"{self.base}[{self.item}]"
        return f"Optional[{text}]" if self.nullable and self.base != "any" else text


@dataclass(frozen=True)
class NotebookParameter:
    """One name of a notebook's ``parameters`` cell (papermill's inference) and its declared type."""

    notebook: str
    name: str
    type: DeclaredType
    default: str
    help: str = ""


def notebooks(notebook_dir: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` in order."""
    found = sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"{notebook_dir}: no numbered notebooks (NN_name.ipynb)")
    return found


def select_notebooks(only: Sequence[str] | None, notebook_dir: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks whose name starts with one of the ``only`` prefixes (all when ``only`` is empty).

    Raises ``ValueError`` naming a prefix that matches no notebook.
    """
    found = notebooks(notebook_dir)
    if not only:
        return found
    unmatched = [p for p in only if not any(nb.name.startswith(p) for nb in found)]
    if unmatched:
        raise ValueError(f"--only {' '.join(unmatched)}: matches no notebook in {notebook_dir} "
                         f"({', '.join(nb.name for nb in found)})")
    return [nb for nb in found if any(nb.name.startswith(p) for p in only)]


def declared_parameters(notebook: str | Path) -> dict[str, NotebookParameter]:
    """The parameters a notebook declares in its cell tagged ``parameters`` (papermill's inference), by name.

    Names that are not Python identifiers (or are keywords) are dropped with a warning: they cannot be assigned.
    """
    import papermill as pm

    notebook = Path(notebook)
    out = {}
    quiet = logging.getLogger("papermill")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))  # not an "Input Notebook" line per notebook inspected
    try:
        inferred = pm.inspect_notebook(str(notebook))
    finally:
        quiet.setLevel(level)
    for name, p in inferred.items():
        if not name.isidentifier() or keyword.iskeyword(name):
            log.warning("%s: parameter %r is not a Python identifier; ignored", notebook.name, name)
            continue
        out[name] = NotebookParameter(notebook.name, name, declared_type(p["inferred_type_name"], p["default"]),
                                      p["default"], p.get("help") or "")
    return out


_TYPE_RE = re.compile(r"^(?:(?P<wrap>Optional|typing\.Optional)\[(?P<inner>.+)\]|(?P<plain>.+))$")


def declared_type(annotation: str | None, default: str) -> DeclaredType:
    """The type a declaration gives: its annotation / ``# type:`` comment, else the type of its default literal.

    ``annotation`` is papermill's ``inferred_type_name`` (the string ``"None"`` when there is none). Known types:
    str/int/float/bool/list/dict/tuple, ``Optional[...]`` of them, ``list[T]`` of a scalar. Another annotation gives
    base ``"unsupported"`` (``item`` = the annotation): a value for it is refused rather than guessed.
    """
    default_value = _literal(default)
    default_is_none = default_value is None and default.strip() == "None"
    if annotation and annotation != "None":
        text = annotation.replace(" ", "")
        m = _TYPE_RE.match(text)
        nullable = bool(m.group("wrap"))
        inner = m.group("inner") if nullable else m.group("plain")
        if inner.endswith(",None]") and inner.startswith("Union["):  # Union[X,None]
            inner, nullable = inner[len("Union["):-len(",None]")], True
        base, item = inner, None
        bracket = re.match(r"^(\w+)\[(\w+)\]$", inner)
        if bracket:
            base, item = bracket.group(1), bracket.group(2)
        base, item = base.lower(), item.lower() if item else None  # List[int] → list[int]
        if (base not in SCALAR_TYPES and base not in CONTAINER_TYPES and base != "any") or \
                (item is not None and item not in SCALAR_TYPES):
            return DeclaredType(UNSUPPORTED, nullable or default_is_none, annotation)
        return DeclaredType(base, nullable or default_is_none, item)
    if default_is_none or default_value is _NOT_LITERAL:
        return DeclaredType("any", True)
    for name, t in {**SCALAR_TYPES, **CONTAINER_TYPES}.items():
        if type(default_value) is t:
            return DeclaredType(name)
    return DeclaredType("any", True)


_NOT_LITERAL = object()


def _literal(text: str) -> Any:
    """A Python literal's value (never evaluated as code), or ``_NOT_LITERAL``."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL


_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def parse_value(text: str, declared: DeclaredType) -> Any:
    """The value of ``-p NAME TEXT`` for a parameter of type ``declared``; ``ValueError`` saying what was expected.

    ``str``: the text as given. ``int`` / ``float``: a decimal number (``1e-3`` for float; a bool is no number).
    ``bool``: true/false, yes/no, 1/0, on/off (any case). ``list`` / ``dict`` / ``tuple``: JSON or a Python literal of
    that type (``[0, 1]``, ``[["Face2Face", "c23"]]``), items checked for ``list[T]``. ``Optional[...]``: also
    ``None`` / ``null``. Undeclared (``any``): the text, or None, or a ``[...]``/``{...}`` literal.
    """
    stripped = text.strip()
    _check_supported(declared)
    if declared.nullable and stripped in ("None", "null"):
        return None
    base = declared.base
    if base == "str":
        return text
    if base == "any":
        if stripped[:1] in ("[", "{"):
            value = _container(stripped)
            if value is not _NOT_LITERAL:
                return value
        return text
    if base in SCALAR_TYPES:
        return _scalar(stripped, base)
    value = _container(stripped)
    want = CONTAINER_TYPES[base]
    if isinstance(value, tuple) and want is list:
        value = list(value)
    if isinstance(value, list) and want is tuple:
        value = tuple(value)
    if value is _NOT_LITERAL or not isinstance(value, want):
        example = '{"a": 1}' if base == "dict" else "[1, 2]"
        raise ValueError(f"expected a {base} literal such as {example}")
    if declared.item is not None:
        for v in value:
            if not _is_type(v, declared.item):
                raise ValueError(f"item {v!r} is not {'an' if declared.item == 'int' else 'a'} {declared.item}")
    return value


def _check_supported(declared: DeclaredType) -> None:
    if declared.base == UNSUPPORTED:
        raise ValueError(f"its declared type {declared.item!r} is not one emd reproduce can check (use str, int, "
                         "float, bool, list, dict, Optional[...] or list[T] in the parameters cell)")


def _scalar(text: str, base: str) -> Any:
    if base == "bool":
        low = text.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError("expected true or false")
    if base == "int":
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        raise ValueError("expected an integer")
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if text.lower() in ("true", "false"):
        raise ValueError("expected a number")
    return value


def _container(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return _literal(text)


def _is_type(value: Any, base: str) -> bool:
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, SCALAR_TYPES[base])


def check_value(value: Any, declared: DeclaredType) -> None:
    """``ValueError`` when a Python value does not have the declared type (for values passed from Python)."""
    _check_supported(declared)
    if value is None:
        if declared.nullable or declared.base == "any":
            return
        raise ValueError("None is not allowed")
    base = declared.base
    if base == "any":
        return
    if base in SCALAR_TYPES:
        if not _is_type(value, base):
            raise ValueError(f"expected {base}, got {type(value).__name__}")
        return
    if not isinstance(value, CONTAINER_TYPES[base]) and not (base == "list" and isinstance(value, tuple)):
        raise ValueError(f"expected {base}, got {type(value).__name__}")
    if declared.item is not None and not all(_is_type(v, declared.item) for v in value):
        raise ValueError(f"expected {declared}, got items {[type(v).__name__ for v in value]}")


def resolve_parameters(
    selected: Sequence[Path],
    raw: Mapping[str, str] | None = None,
    values: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Check extra parameters against the declarations of the ``selected`` notebooks; return them per notebook.

    ``raw``: text from the command line (typed by the declarations, :func:`parse_value`); ``values``: Python values
    (checked, :func:`check_value`). Each notebook gets the extra parameters it declares. Raises
    :class:`ParameterError` for a name no selected notebook declares (listing the accepted names), a base parameter
    (``preset``, ``data_root``, ``results_root``: set by their own options), or a value that does not fit its
    declaration (naming the parameter, the notebooks and the expected type).
    """
    given: dict[str, tuple[str, Any]] = {**{k: ("raw", v) for k, v in (raw or {}).items()},
                                         **{k: ("value", v) for k, v in (values or {}).items()}}
    if not given:
        return {nb.name: {} for nb in selected}
    declared = {nb.name: declared_parameters(nb) for nb in selected}
    accepted = sorted({n for d in declared.values() for n in d} - set(BASE_PARAMETERS))
    per_nb: dict[str, dict[str, Any]] = {nb.name: {} for nb in selected}
    for name, (kind, given_value) in given.items():
        label = f"-p {_shell(name)}" if kind == "raw" else f"parameter {_short(repr(name))}"
        if name in BASE_PARAMETERS:
            option = {"preset": "--preset", "data_root": "--data-root", "results_root": "--results"}[name]
            raise ParameterError(f"{label}: set it with {option}")
        if name not in accepted:
            raise ParameterError(f"{label}: not a parameter of {_names(selected)}; accepted names: "
                                 f"{', '.join(accepted) or '(none)'}")
        shown = f"-p {name} {_shell(given_value)}" if kind == "raw" else f"parameter {name}={_short(repr(given_value))}"
        for nb_name, params in declared.items():
            p = params.get(name)
            if p is None:
                continue
            try:
                if kind == "raw":
                    value = parse_value(given_value, p.type)
                else:
                    check_value(given_value, p.type)
                    value = given_value
            except ValueError as e:
                raise ParameterError(f"{shown}: {name} is declared {p.type} in {nb_name} (default {p.default}); "
                                     f"{e}") from None
            per_nb[nb_name][name] = value
    return per_nb


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shell(text: str) -> str:
    """``text`` as a shell would need it typed (so a message shows what the user gave), shortened."""
    return _short(shlex.quote(text))


def _names(selected: Sequence[Path]) -> str:
    return ", ".join(nb.name for nb in selected) if len(selected) <= 3 else f"the {len(selected)} notebooks run"


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def open_study(
    preset: str,
    data_root: str | Path,
    results_root: str | Path,
    selected: Sequence[Path],
    raw_parameters: Mapping[str, str] | None = None,
    extra_parameters: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> tuple[Study, dict[str, dict[str, Any]]]:
    """The study that ``emd reproduce`` runs with these options, and the extra parameters of each ``selected``
    notebook (:func:`resolve_parameters`). Those named in :data:`emdlib.study.STUDY_OVERRIDES` open the study;
    relative paths among them (and in path ``settings``), and ``data_root`` / ``results_root``, are taken in the
    directory this runs in. Raises :class:`ParameterError` as :func:`resolve_parameters`, and for settings given
    both with ``-p settings`` and ``settings``."""
    extras = resolve_parameters(selected, raw_parameters, extra_parameters)
    overrides = {k: v for given in extras.values() for k, v in given.items() if k in STUDY_OVERRIDES}
    if settings:
        if overrides.get("settings"):
            raise ParameterError("settings are given twice: with -p settings and with --set/--config; use one")
        overrides["settings"] = dict(settings)
    for key, value in (overrides.get("settings") or {}).items():  # a relative weights path given to --set
        if key in PATH_SETTINGS and isinstance(typed := parse_setting(key, value), str):
            overrides["settings"][key] = str(Path(typed).expanduser().absolute())
    for name in STUDY_PATHS:  # relative paths are the caller's, not the repository's (Study.open's default)
        if overrides.get(name) is not None:
            overrides[name] = str(Path(overrides[name]).expanduser().absolute())
    study = Study.open(preset, Path(data_root).expanduser().absolute(), Path(results_root).expanduser().absolute(),
                       **overrides)
    return study, extras


def reproduce(
    preset: str,
    data_root: str | Path = "data",
    results_root: str | Path = "results",
    only: Sequence[str] | None = None,
    notebook_dir: str | Path | None = None,
    extra_parameters: Mapping[str, Any] | None = None,
    raw_parameters: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
    log_output: bool = False,
    progress: bool = True,
    nproc: int | None = None,
) -> dict[str, float]:
    """Execute the notebooks for ``preset``; return the wall time of each (``timings.json``, updated as each ends).

    ``only`` restricts the run to notebooks whose name starts with one of the given prefixes (e.g. ``["00", "01"]``);
    ``notebook_dir`` defaults to :data:`NOTEBOOK_DIR` (the repository's ``notebooks/``). ``raw_parameters`` (text,
    typed by each notebook's declarations) and ``extra_parameters`` (Python values, checked against them) go to the
    notebooks that declare them; both are validated before the first notebook starts (:func:`resolve_parameters`,
    :class:`ParameterError`). Those named in :data:`emdlib.study.STUDY_OVERRIDES` also open the study; relative paths
    among them, and ``data_root`` / ``results_root``, are taken in the directory this runs in. ``settings``: typed
    preset values (``{"emd.epochs": "1"}`` from ``--set``/``--config``; :func:`emdlib.presets.parse_setting`),
    checked before anything runs and passed to every notebook as its ``settings`` parameter. Progress: one log line
    per notebook, a per-cell progress bar (``progress``, on a terminal), the study's own progress lines (which
    cell, which run, each epoch: :class:`ProgressLines`) and, with ``log_output``, all of the cells' printed output.

    ``nproc``: each network of the study trains on this many processes (data parallel,
    :func:`emdlib.study.experiments.run_cell`), through ``$EMD_NPROC`` in the notebooks' environment (restored after);
    None leaves the environment as it is (1 process when unset). Raises ValueError when ``nproc < 1``.

    Raises :class:`NotebookError` (one-line message; the partly executed copy is kept) when a notebook fails.
    """
    if nproc is not None:
        from emdlib.study.experiments import NPROC_ENV

        if nproc < 1:
            raise ValueError(f"nproc {nproc}: must be at least 1")
        previous = os.environ.get(NPROC_ENV)
        os.environ[NPROC_ENV] = str(int(nproc))  # the notebooks' kernels inherit this environment
        try:
            return reproduce(preset, data_root, results_root, only, notebook_dir, extra_parameters, raw_parameters,
                             settings, log_output, progress)
        finally:
            if previous is None:
                os.environ.pop(NPROC_ENV, None)
            else:
                os.environ[NPROC_ENV] = previous
    import papermill as pm

    selected = select_notebooks(only, NOTEBOOK_DIR if notebook_dir is None else notebook_dir)
    study, extras = open_study(preset, data_root, results_root, selected, raw_parameters, extra_parameters, settings)
    out_dir = study.paths.results / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    base = study.parameters()
    preflight(study, [nb.name[:2] for nb in selected])
    fetch_imagenet_weights(study, [nb.name[:2] for nb in selected])
    ensure_stages(study, [nb.name[:2] for nb in selected])
    # timings.json holds this run's times as they come (notebook 07 reports them) and, for the notebooks not run
    # now (--only), their earlier times; the entries of the notebooks about to run are dropped first, never stale
    timings_path = study.paths.results / "timings.json"
    previous = read_json(timings_path) if timings_path.is_file() else {}
    kept = {k: v for k, v in previous.items() if k not in {nb.name for nb in selected}}
    timings: dict[str, float] = {}
    for i, nb in enumerate(selected, 1):
        write_json(timings_path, dict(sorted({**kept, **timings}.items())))
        params = {**base, **{k: v for k, v in extras[nb.name].items() if k not in STUDY_OVERRIDES}}
        log.info("[%d/%d] running %s (preset %s%s)", i, len(selected), nb.name, preset,
                 "".join(f", {k}={v!r}" for k, v in extras[nb.name].items()))
        t0 = time.perf_counter()
        try:
            _execute(pm, nb, out_dir / nb.name, params, log_output, progress)
        except NotebookError:
            if nb.name in previous:  # its executed copy is still the earlier run's: so is its time
                write_json(timings_path, dict(sorted({**kept, nb.name: previous[nb.name], **timings}.items())))
            raise
        timings[nb.name] = round(time.perf_counter() - t0, 1)
        log.info("[%d/%d] %s done in %.1f s", i, len(selected), nb.name, timings[nb.name])
    write_json(timings_path, dict(sorted({**kept, **timings}.items())))
    return timings


#: Notebooks that need an expression cell (F2F or NT at c23, :func:`emdlib.study.experiments.paper_cells`): 02's
#: FER comparison, 04's Table V, 06's Figs. 4, 5 and 7.
NEED_EXPRESSION_CELL = ("02", "04", "06")


def preflight(study: Study, notebooks: Sequence[str]) -> None:
    """Refuse, before the first notebook, a study the selected ``notebooks`` (prefixes) would fail on after hours of
    work: ValueError when notebook 02, 04 or 06 is selected and ``emd.cells`` has no F2F or NT cell at c23 (the
    paper's expression cells), or when several processes (``$EMD_NPROC``, ``--nproc``) would train with
    ``emd.sync_bn`` on the CPU (SyncBatchNorm runs on GPUs only). Each message says what to change."""
    from emdlib.study.experiments import default_nproc, paper_cells
    from emdlib.train import resolve_device

    needing = [n for n in notebooks if n in NEED_EXPRESSION_CELL]
    if needing:
        try:
            paper_cells(study.preset)
        except ValueError as e:
            raise ValueError(f"{e}: notebooks {', '.join(needing)} (the FER comparison, Table V, Figs. 4, 5, 7) need "
                             "a Face2Face or NeuralTextures c23 cell; add one to emd.cells, or leave them out "
                             "(--only 00 01 03 05 07)") from None
    if (any(n >= "02" for n in notebooks) and default_nproc() > 1 and study.preset.emd.sync_bn
            and resolve_device(study.device).type != "cuda"):
        raise ValueError(f"emd.sync_bn with {default_nproc()} processes on the CPU: SyncBatchNorm runs on GPUs only; "
                         "--set emd.sync_bn=false (each process normalises its share) or train on CUDA")


def fetch_imagenet_weights(study: Study, notebooks: Sequence[str]) -> list[str]:
    """Before any notebook runs: with ``emd.pretrained=True`` and a selected notebook that trains networks (02 on),
    download the timm ImageNet weights of :func:`emdlib.check.imagenet_models` not in the local cache yet, so that a
    machine without network fails now — not after hours of ``prepare`` and FER training — with
    :func:`emdlib.pretrained.create_timm_model`'s RuntimeError (which says how to give local files). Returns the
    networks fetched."""
    from emdlib.check import imagenet_models, timm_weights_cached
    from emdlib.pretrained import create_timm_model

    if study.preset.emd.pretrained is not True or not any(n >= "02" for n in notebooks):
        return []
    fetched = []
    for name in imagenet_models(study.preset.emd):
        if not timm_weights_cached(name):
            log.info("fetching the ImageNet weights of %s before the notebooks run", name)
            create_timm_model(name, True, num_classes=0)
            fetched.append(name)
    return fetched


def failed_copy(out: Path) -> Path:
    """Where the partly executed copy of a failed notebook ``out`` (``NN_name.ipynb``) is kept:
    ``NN_name.failed.ipynb`` beside it, so that a failed re-run never replaces the last good executed copy."""
    return out.with_name(f"{out.stem}.failed{out.suffix}")


class ProgressLines(io.TextIOBase):
    """A text stream for papermill's ``stderr_file``: the notebook's own log lines (the format the notebooks give
    :func:`logging.basicConfig`, ``LEVEL emdlib.module: message``) are passed on to this module's logger as
    ``NN_name: message`` while the notebook runs — which cell or run is training, each epoch, warnings — so that
    ``emd reproduce`` shows where a long notebook is. Other output (progress bars, tracebacks) is left to the executed
    copy."""

    LINE = re.compile(r"^(?P<level>INFO|WARNING|ERROR|CRITICAL) (?P<name>emdlib[\w.]*): (?P<message>.*)$")

    def __init__(self, notebook: str) -> None:
        super().__init__()
        self.notebook, self._partial = notebook, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._forward(line.rsplit("\r", 1)[-1])
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self._forward(self._partial.rsplit("\r", 1)[-1])
            self._partial = ""

    def _forward(self, line: str) -> None:
        m = self.LINE.match(_strip_ansi(line).strip())
        if m:
            log.log(logging.getLevelName(m["level"]), "  %s: %s", self.notebook, m["message"])


def _execute(pm: Any, nb: Path, out: Path, params: dict[str, Any], log_output: bool, progress: bool) -> None:
    """One notebook through papermill into ``out``; any failure becomes a :class:`NotebookError` (traceback in the
    copy). papermill writes as it goes, so it writes to a temporary name: a notebook that finishes replaces ``out``
    (and removes an earlier failed copy), one that fails is moved to :func:`failed_copy` and ``out`` is untouched."""
    bar = {"desc": nb.name, "unit": "cell", "leave": False, "disable": None} if progress else False
    running = out.with_name(f".{out.stem}.running{out.suffix}")
    failed = failed_copy(out)
    try:
        pm.execute_notebook(str(nb), str(running), parameters=params, cwd=str(nb.parent), progress_bar=bar,
                            log_output=log_output, stderr_file=None if log_output else ProgressLines(nb.name))
    except pm.PapermillExecutionError as e:
        _keep(running, failed)
        cell, cells, first = _source_cell(failed, e.cell_index)
        log.debug("%s: traceback of the failed cell:\n%s", nb.name, "\n".join(_strip_ansi(t) for t in e.traceback))
        raise NotebookError(nb.name, failed, e.ename, e.evalue, cell, cells, e.exec_count, first) from None
    except Exception as e:  # the kernel died, could not start, timed out, ...
        log.debug("%s: execution failed", nb.name, exc_info=True)
        _keep(running, failed)
        raise NotebookError(nb.name, failed, type(e).__name__, str(e)) from None
    if running.exists():  # papermill always writes it; a stand-in for papermill may not
        os.replace(running, out)
    failed.unlink(missing_ok=True)


def _keep(running: Path, failed: Path) -> None:
    """Move a failed run's partial copy to ``failed`` (nothing to move when papermill never started writing)."""
    if running.exists():
        os.replace(running, failed)


ERROR_TAG = "papermill-error-cell-tag"  # papermill.execute.ERROR_MARKER_TAG: the cells it adds to a failed copy


def _source_cell(executed: Path, index: int) -> tuple[int | None, int | None, str]:
    """``(1-based cell number in the source notebook, number of source cells, first source line)`` of the cell that
    papermill reports at ``index`` (an index into the executed notebook before its error cells were added)."""
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:  # the copy could not be read back: report what papermill said
        return index + 1, None, ""
    cells = [c for c in nb.cells if ERROR_TAG not in c.metadata.get("tags", [])]
    if not 0 <= index < len(cells):
        return index + 1, None, ""
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", [])]
    source_cells = [c for c in cells if "injected-parameters" not in c.metadata.get("tags", [])]
    number = index + 1 - sum(1 for i in injected if i < index)
    lines = [ln.strip() for ln in cells[index].source.splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return number, len(source_cells), first if len(first) <= 80 else first[:79] + "…"


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
