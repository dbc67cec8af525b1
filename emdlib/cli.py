"""The ``emd`` command: ``synth``, ``forge``, ``prepare``, ``detect``, ``reproduce``.

Each sub-command is a thin wrapper around a library function, so everything the command does can be called from a
notebook too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from emdlib import __version__
from emdlib.presets import PRESETS, get_preset

log = logging.getLogger("emdlib")


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


def _cmd_prepare(args: argparse.Namespace) -> int:
    from emdlib.data.prepare import prepare

    preset = get_preset(args.preset)
    summary = prepare(
        Path(args.root), Path(args.cache), preset.prepare,
        methods=preset.data.methods, compressions=preset.data.compressions,
        splits_dir=Path(args.splits) if args.splits else None, workers=args.workers,
    )
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0 if summary.get("ok_frames", 0) > 0 else 1


def _parse_value(text: str):
    """A notebook parameter from the command line: JSON when it parses (numbers, lists, null), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from emdlib.reproduce import reproduce

    extra = {name: _parse_value(value) for name, value in (args.param or [])}
    timings = reproduce(args.preset, data_root=args.data_root, results_root=args.results, only=args.only,
                        extra_parameters=extra)
    for name, seconds in timings.items():
        sys.stdout.write(f"{name}: {seconds:.1f} s\n")
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    from emdlib.detect import detect, exit_code

    results = detect(
        args.paths, args.checkpoint, out_dir=args.out, fps=args.fps, every=args.every,
        overlay=args.overlay, device=args.device, batch_size=args.batch_size,
        detect_max_side=args.detect_max_side or None,
    )
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
p_fake, mask_area: one row per sampled frame and face), <name>.json (summary, warnings, timings, rows; also for
inputs that failed, with the error), with --overlay <name>.overlay.mp4 (videos) or .overlay.<ext> (images),
and summary.csv (one line per input).
<name> is the input's file name (extension kept), or its path relative to a folder given on the command line.
stdout: one summary line per input ("PATH: ... p(fake)=0.873 -> FAKE", "PATH: ... no face found" or
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

    p = sub.add_parser("prepare", help="sample frames, crop faces, build the face cache and manifest")
    p.add_argument("--root", required=True, help="data root in the FF++ layout")
    p.add_argument("--cache", required=True, help="output cache folder")
    p.add_argument("--splits", default=None, help="folder with train/val/test.json (default: <root>/splits)")
    p.add_argument("--workers", type=int, default=None, help="parallel worker processes")
    _add_preset(p)
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
    g.add_argument("--fps", type=float, default=None, help="sample this many frames per second of video")
    g.add_argument("--every", type=int, default=None, help="sample every N-th frame (default: every frame)")
    p.add_argument("--overlay", action="store_true", help="write annotated videos/images (box, score, mask heat-map)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, help="faces per network batch (default %(default)s)")
    p.add_argument("--detect-max-side", type=int, default=1280,
                   help="detect faces on a copy down-scaled to this longest side (0 = full size; default %(default)s)")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("reproduce", help="run the numbered notebooks in order with papermill")
    p.add_argument("--data-root", default="data", help="where generated data and caches go (default ./data)")
    p.add_argument("--results", default="results", help="results root (default ./results)")
    p.add_argument("--only", nargs="*", default=None, help="notebook prefixes to run, e.g. 00 01")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="extra notebook parameter, e.g. -p ffpp_root /data/FaceForensics -p esr_weights /data/esr9")
    _add_preset(p)
    p.set_defaults(func=_cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
