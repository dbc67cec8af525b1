"""The ``emd`` command: ``synth``, ``forge``, ``forge-affectnet``, ``prepare``, ``detect``, ``reproduce``,
``check``.

Each sub-command is a thin wrapper around a library function, so everything the command does can be called from a
notebook too.

One error path for every sub-command (:func:`main`): what can be checked before the work starts is checked first
(:data:`CHECKS`: input folders exist and can be read, output folders are folders and can be written, a checkpoint and
its sidecar load, counts are positive); a problem ends the command with one line naming the path and the problem
and exit status 2. Errors raised later end with one line too; the traceback is logged only with ``-v``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from emdlib import __version__
from emdlib.data.media import os_reason
from emdlib.presets import PRESETS, get_preset

log = logging.getLogger("emdlib")

EXIT_OK = 0
EXIT_FAILED = 1  # the work ran and failed, or an unexpected error
EXIT_USAGE = 2  # usage error, or invalid input found before the work started
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

EXIT_EPILOG = """\
exit status (every command):
  0    done
  1    the work failed: prepare cached no usable frame; detect could read no input; a reproduce notebook raised
       (one line names the notebook, the cell and the error, and the partly executed copy); check found something
       missing or malformed (its ERROR lines say what); or an unexpected error (one line; run `emd -v ...` for
       the traceback)
  2    usage error, or invalid input found before any work started: a missing or unreadable input, an output path
       that is a file or cannot be written, a checkpoint or sidecar that cannot be loaded, a reproduce -p name the
       notebooks do not declare or a value not of the declared type
  3    detect only: some inputs were read, others could not be (their ERROR lines say why)
  130  interrupted (Ctrl-C)
"""


class UsageError(Exception):
    """A command-line value that cannot work (exit status 2); the message names the option, the path, the problem."""


def _add_preset(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--preset", default=default, choices=sorted(PRESETS), help=f"study preset (default {default})")


def _data_config(args: argparse.Namespace):
    """The preset's DataConfig with the command line's size overrides applied."""
    import dataclasses

    cfg = get_preset(args.preset).data
    changes = {k: v for k, v in (("pairs", tuple(args.pairs) if args.pairs else None),
                                 ("frames_per_clip", args.frames), ("frame_size", args.size)) if v is not None}
    return dataclasses.replace(cfg, **changes)


def _add_size_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), help="override the split sizes (pairs)")
    p.add_argument("--frames", type=int, help="override frames per clip")
    p.add_argument("--size", type=int, help="override the frame side in pixels")


def _cmd_synth(args: argparse.Namespace) -> int:
    from emdlib.data.synth import build_synth_world

    cfg = _data_config(args)
    summary = build_synth_world(Path(args.out), cfg, seed=args.seed)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def _cmd_forge(args: argparse.Namespace) -> int:
    from emdlib.data.photos import build_faces_world

    cfg = _data_config(args)
    summary = build_faces_world(Path(args.faces), Path(args.out), cfg, seed=args.seed)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def _cmd_forge_affectnet(args: argparse.Namespace) -> int:
    from emdlib.data.affectnet import write_affectnet

    counts = write_affectnet(Path(args.out), Path(args.ckplus), Path(args.neutral), train_per_class=args.train,
                             val_per_class=args.val, seed=args.seed)
    sys.stdout.write(json.dumps(counts, indent=2) + "\n")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from emdlib.data.prepare import prepare

    from emdlib.presets import override_preset

    preset = override_preset(get_preset(args.preset), settings_options(args))  # as reproduce builds its cache
    summary = prepare(
        Path(args.root), Path(args.cache), preset.prepare,
        methods=preset.data.methods, compressions=preset.data.compressions,
        splits_dir=Path(args.splits) if args.splits else None, workers=args.workers,
    )
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0 if summary.get("ok_frames", 0) > 0 else 1


def _raw_parameters(pairs: Sequence[Sequence[str]] | None) -> dict[str, str]:
    """``-p NAME VALUE`` pairs as ``{name: text}``; a name given twice is a usage error."""
    raw: dict[str, str] = {}
    for name, value in pairs or []:
        if name in raw:
            raise UsageError(f"-p {name} is given twice ({raw[name]!r} and {value!r})")
        raw[name] = value
    return raw


def settings_options(args: argparse.Namespace) -> dict[str, object]:
    """The typed preset settings of ``--config FILE`` then ``--set KEY=VALUE`` (a ``--set`` wins over the file)."""
    from emdlib.presets import parse_set_options, read_settings_file

    settings: dict[str, object] = dict(read_settings_file(args.config)) if args.config else {}
    settings.update(parse_set_options(args.set or []))
    return settings


def _add_roots(p: argparse.ArgumentParser) -> None:
    """``--data-root`` and ``--results``, as ``reproduce`` and ``check`` take them."""
    p.add_argument("--data-root", default="data", help="where generated data and caches go (default ./data)")
    p.add_argument("--results", default="results", help="results root (default ./results)")


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change one preset value, typed by its declaration: --set emd.epochs=1 --set "
                        "emd.cells='[[\"Face2Face\", \"c23\"]]' (keys: SECTION.FIELD of emdlib.presets; unknown keys "
                        "and values of the wrong type are refused before anything runs)")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of preset values, e.g. 'emd: {epochs: 1}' "
                                                    "(--set wins over it)")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from emdlib.reproduce import reproduce

    raw = _raw_parameters(args.param)
    # parameter names and values, and the settings, are checked before the first notebook runs
    timings = reproduce(args.preset, data_root=args.data_root, results_root=args.results, only=args.only,
                        notebook_dir=args.notebooks, raw_parameters=raw, settings=settings_options(args),
                        log_output=args.verbose, nproc=args.nproc)
    for name, seconds in timings.items():
        sys.stdout.write(f"{name}: {seconds:.1f} s\n")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """``emd check``: the study ``emd reproduce`` would open with the same options, checked (:mod:`emdlib.check`)."""
    from emdlib.check import check_study, errors, format_findings
    from emdlib.reproduce import open_study, select_notebooks

    # -p is typed by every notebook's declarations and relative paths are taken here, as for reproduce
    study, _ = open_study(args.preset, args.data_root, args.results, select_notebooks(None),
                          _raw_parameters(args.param), settings=settings_options(args))
    findings = check_study(study, decode=not args.no_decode)
    sys.stdout.write(f"emd check --preset {study.name}: FF++ {study.paths.world}, splits {study.paths.splits}\n")
    sys.stdout.write(format_findings(findings) + "\n")
    return EXIT_FAILED if errors(findings) else EXIT_OK


CHECK_EPILOG = """\
Lists what the study would find missing or malformed: the FF++ layout, split files, c23/c40 videos and masks (a
sample of each folder decoded), AffectNet CSVs and images, the ESR-9 files, ImageNet weights, and the free disk
space for the face cache. Each finding names the file or folder and how to fix it.

exit status:
  0  no errors (warnings may be listed)
  1  errors were found
  2  usage error: an unknown -p name, a value not of the declared type, an output folder that cannot be written
"""


def _cmd_detect(args: argparse.Namespace) -> int:
    from emdlib.detect import REDETECT_S, Detector, detect, exit_code

    det = Detector.from_checkpoint(args.checkpoint, args.device, args.batch_size)
    every = 1 if args.every_frame else args.every
    results = detect(args.paths, det, out_dir=args.out, fps=args.fps, every=every, overlay=args.overlay,
                     face_detector=args.face_detector,
                     redetect_s=REDETECT_S if args.redetect is None else args.redetect)
    for line in det.describe():  # what the user trusts: training data, input size, validation accuracy
        sys.stdout.write(line + "\n")
    for r in results:
        sys.stdout.write(r.summary() + "\n")
    sys.stdout.flush()
    code = exit_code(results)
    failed = sum(not r.ok for r in results)
    if not results:
        log.error("no inputs found in %s", " ".join(args.paths))
    elif code == 1:
        log.error("none of the %d inputs could be read", len(results))
    elif failed:
        log.warning("%d of %d inputs could not be read (see the ERROR lines)", failed, len(results))
    return code


DETECT_EPILOG = """\
outputs (in --out): <name>.csv (frame, time_s, face, left, top, right, bottom, box_x, box_y, box_size,
p_fake, mask_area, partial, detection: one row per sampled frame and face; detection is "full" or "tracked"),
<name>.json (summary, sampling rate, the indices of the frames scored, warnings, timings, rows; also for inputs
that failed, with the error), with --overlay <name>.overlay.mp4 (videos) or .overlay.<ext> (images),
and summary.csv (one line per input).
<name> is the input's file name (extension kept), or its path relative to a folder given on the command line.
The --out folder (and any earlier emd detect output folder) is never read as input: re-running is idempotent.
stdout: the model line (checkpoint, input size, training data, validation accuracy; a WARNING line for a model
trained on the synthetic world), then one summary line per input ("PATH: ... p(fake)=0.873 -> FAKE", "PATH: ... no face found" or
"PATH: ERROR why"). Video score = mean over sampled frames with a face of the most-fake face's p_fake.

exit status:
  0  every input was read (including inputs in which no face was found)
  3  some inputs were read, others could not be (their ERROR lines say why)
  1  no input could be read, or no input was found
  2  usage error, or the checkpoint could not be loaded
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="render the synthetic FF++-layout world (pristine clips + manipulations)")
    p.add_argument("--out", required=True, help="output root (FF++ layout)")
    p.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    _add_preset(p)
    _add_size_overrides(p)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("forge", help="manipulate a folder of real face photos into the FF++ layout")
    p.add_argument("--faces", required=True, help="folder of face photos (neutral/ and smiling/ pairs, or flat)")
    p.add_argument("--out", required=True, help="output root (FF++ layout)")
    p.add_argument("--seed", type=int, default=None)
    _add_preset(p, default="faces")
    _add_size_overrides(p)
    p.set_defaults(func=_cmd_forge)

    p = sub.add_parser("forge-affectnet", help="write a miniature AffectNet (official CSV layout) from CK+ crops "
                                                "and neutral face photos")
    p.add_argument("out", help="output folder (new or empty)")
    p.add_argument("--ckplus", required=True, help="CK+ crops in class folders (anger, contempt, disgust, fear, "
                                                  "happy, sadness, surprise)")
    p.add_argument("--neutral", required=True, help="folder of neutral face photos, one person each")
    p.add_argument("--train", type=int, default=12, help="training images per class (default %(default)s)")
    p.add_argument("--val", type=int, default=4, help="validation images per class (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_forge_affectnet)

    p = sub.add_parser("prepare", help="sample frames, crop faces, build the face cache and manifest")
    p.add_argument("--root", required=True, help="data root in the FF++ layout")
    p.add_argument("--cache", required=True, help="output cache folder")
    p.add_argument("--splits", default=None, help="folder with train/val/test.json (default: <root>/splits)")
    p.add_argument("--workers", type=int, default=None, help="parallel worker processes")
    _add_preset(p)
    _add_settings(p)  # the same prepare.* / data.* values as `emd reproduce --set`, or the caches differ
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("detect", help="score faces in videos/images with a trained detector",
                       description="Detect every face (dlib, FF++ 1.3x box) in the sampled frames of videos and "
                                   "images and score it with a trained detector.",
                       epilog=DETECT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="videos (mp4/avi/mov/mkv), images (jpg/png/webp/bmp/tif) or folders "
                                            "(searched recursively; other files in them are skipped)")
    p.add_argument("--checkpoint", required=True, help="emdlib .safetensors detector checkpoint (with its .json "
                                                       "sidecar) or official MesoNet Keras weights (.h5)")
    p.add_argument("--out", default="detect_out",
                   help="folder for per-input CSV/JSON and overlays (default %(default)s)")
    g = p.add_mutually_exclusive_group()
    # the defaults named in the help are emdlib.detect.DEFAULT_FPS / REDETECT_S and emdlib.data.faces.FACE_DETECTORS
    # (not imported here: the parser stays free of torch and OpenCV; tests/test_detect.py checks they agree)
    g.add_argument("--fps", type=float, default=None,
                   help="sample this many frames per second of video (default 5)")
    g.add_argument("--every", type=int, default=None, help="sample every N-th frame")
    g.add_argument("--every-frame", action="store_true", help="score every frame (slower)")
    p.add_argument("--redetect", type=float, default=None, metavar="SECONDS",
                   help="seconds of video between full-frame face detections; in between each face is re-detected "
                        "by dlib near its last box, and a lost face triggers a full detection at once; 0 = full "
                        "detection on every sampled frame (default 1)")
    p.add_argument("--face-detector", choices=("dlib", "dlib-fast"), default="dlib",
                   help="full-frame face detector: dlib (training's: HOG, one up-sampling, faces from ~40 px) or "
                        "dlib-fast (no up-sampling, then re-detected at training's scale; 1.6-4x faster, misses "
                        "faces narrower than ~60 px) (default %(default)s)")
    p.add_argument("--overlay", action="store_true", help="write annotated videos/images (box, score, mask heat-map)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, help="faces per network batch (default %(default)s)")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("reproduce", help="run the numbered notebooks in order with papermill")
    _add_roots(p)
    p.add_argument("--only", nargs="*", default=None, help="notebook prefixes to run, e.g. 00 01")
    p.add_argument("--notebooks", default=None, help="folder of numbered notebooks NN_name.ipynb to run (default: "
                                                     "the study's notebooks/ in the repository)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="notebook parameter, e.g. -p ffpp_root /data/FaceForensics -p seeds '[0, 1]'. Only names "
                        "declared in the parameters cell of the notebooks being run are accepted; VALUE is read as "
                        "the declared type (str values as given, so a folder named 2024 stays a string)")
    p.add_argument("--nproc", type=int, default=None,
                   help="train each network on this many processes (GPUs) with PyTorch DDP, started from the "
                        "notebooks through torch's launcher; the batch size stays the global batch (default: 1)")
    _add_settings(p)
    _add_preset(p)
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("check", help="preflight: list what a study's inputs lack, in seconds, before reproduce",
                       description="Check the inputs of the study that `emd reproduce` would run with the same "
                                   "options, without running anything.",
                       epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_roots(p)
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="study parameter, as for emd reproduce: -p ffpp_root DIR, -p splits_dir DIR, "
                        "-p affectnet_root DIR, -p esr_weights DIR, -p imagenet_weights PATH, ...")
    p.add_argument("--no-decode", action="store_true", help="do not decode a sample video of each folder")
    _add_settings(p)
    _add_preset(p, default="paper")
    p.set_defaults(func=_cmd_check)
    parser.description = "\n\n".join(__doc__.split("\n\n")[:2])  # the rest is for readers of the code
    parser.epilog = EXIT_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for name, sp in sub.choices.items():
        if name not in ("detect", "check"):  # their own epilogs have their exit statuses
            sp.epilog, sp.formatter_class = EXIT_EPILOG, argparse.RawDescriptionHelpFormatter
    return parser


# ------------------------------------------------------------------------------------------- checks before work
def _input_dir(value: str, option: str) -> None:
    """An existing folder that can be listed."""
    path = Path(value)
    if not path.exists():
        raise UsageError(f"{option} {path}: no such folder")
    if not path.is_dir():
        raise UsageError(f"{option} {path}: is a file, not a folder")
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as e:
        raise UsageError(f"{option} {path}: folder cannot be read ({os_reason(e, path)})") from None


def _output_dir(value: str, option: str) -> None:
    """A folder that exists, or can be created, and in which a file can be written.

    Nothing is created: a file is written and removed again in the folder, or in its nearest existing parent when
    the folder does not exist yet (the command creates it when its work starts).
    """
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: exists and is a file, not a folder")
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: cannot be created, {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".emd-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = os_reason(e)
        if existing == path:
            raise UsageError(f"{option} {path}: folder cannot be written ({why})") from None
        raise UsageError(f"{option} {path}: cannot be created, {existing} cannot be written ({why})") from None


def _checkpoint(value: str, option: str) -> None:
    """A checkpoint file whose sidecar has the right shape and belongs to its weights (``.h5``: the file exists)."""
    from emdlib.checkpoint import load_meta

    path = Path(value)
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file")
    if not path.is_file():
        raise UsageError(f"{option} {path}: is a folder, not a checkpoint file")
    if path.suffix.lower() in (".h5", ".hdf5"):
        return
    try:
        load_meta(path)
    except (ValueError, OSError) as e:
        raise UsageError(f"{option}: {_message(e)}") from None


def _device(value: str, option: str) -> None:
    """A torch device this machine has: ``cpu``, or ``cuda``/``cuda:N`` with a visible GPU, or ``mps``."""
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        raise UsageError(f"{option} {value}: not a device name (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {value}: no CUDA GPU is visible on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {value}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{option} {value}: Apple's MPS backend is not available here (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{option} {value}: emd detect runs on cpu, cuda or mps")


def _positive(value: Any, option: str) -> None:
    if value is not None and int(value) < 1:
        raise UsageError(f"{option} {value}: must be at least 1")


def _positive_float(value: Any, option: str) -> None:
    if value is not None and not float(value) > 0:
        raise UsageError(f"{option} {value}: must be above 0")


def _non_negative(value: Any, option: str) -> None:
    if value is not None and not float(value) >= 0:
        raise UsageError(f"{option} {value}: must be 0 or more")


#: What each sub-command checks before it starts: (argument, check, option name). Optional arguments left unset
#: (None) are not checked.
CHECKS: dict[str, list[tuple[str, Callable[[Any, str], None], str]]] = {
    "synth": [("out", _output_dir, "--out"), ("frames", _positive, "--frames"), ("size", _positive, "--size")],
    "forge": [("faces", _input_dir, "--faces"), ("out", _output_dir, "--out"), ("frames", _positive, "--frames"),
              ("size", _positive, "--size")],
    "forge-affectnet": [("ckplus", _input_dir, "--ckplus"), ("neutral", _input_dir, "--neutral"),
                        ("out", _output_dir, "OUT"), ("train", _positive, "--train"), ("val", _positive, "--val")],
    "prepare": [("root", _input_dir, "--root"), ("splits", _input_dir, "--splits"), ("cache", _output_dir, "--cache"),
                ("workers", _positive, "--workers")],
    "detect": [("checkpoint", _checkpoint, "--checkpoint"), ("out", _output_dir, "--out"),
               ("batch_size", _positive, "--batch-size"), ("device", _device, "--device"),
               ("fps", _positive_float, "--fps"), ("redetect", _non_negative, "--redetect")],
    "reproduce": [("notebooks", _input_dir, "--notebooks"), ("results", _output_dir, "--results"),
                  ("data_root", _output_dir, "--data-root"), ("nproc", _positive, "--nproc")],
    "check": [("results", _output_dir, "--results"), ("data_root", _output_dir, "--data-root")],
}


def check_args(args: argparse.Namespace) -> None:
    """Run the :data:`CHECKS` of ``args.command``; raises :class:`UsageError` for the first that fails."""
    for attr, check, option in CHECKS.get(args.command, []):
        value = getattr(args, attr, None)
        if value is not None:
            check(value, option)


# ------------------------------------------------------------------------------------------------ the error path
#: Exceptions that describe bad input (a file, a value): exit status 2. Everything else unexpected: 1.
INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
                ValueError, KeyError)


def _message(e: BaseException) -> str:
    """One line for an exception: an OSError as ``path: problem``, a KeyError without its quotes."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    elif isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``emd``; returns the exit status (see ``emd --help``). Never raises (but argparse's own usage exit)."""
    from emdlib.reproduce import NotebookError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        check_args(args)
        return int(args.func(args) or 0)
    except UsageError as e:
        log.error("%s", " ".join(str(e).split()))
        return EXIT_USAGE
    except NotebookError as e:
        log.error("%s", e)
        return EXIT_FAILED
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except INPUT_ERRORS as e:
        log.error("%s", _message(e))
        log.debug("traceback", exc_info=True)
        return EXIT_USAGE
    except Exception as e:
        log.error("unexpected error: %s: %s (run `emd -v %s ...` for the traceback)", type(e).__name__, _message(e),
                  args.command)
        log.debug("traceback", exc_info=True)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
