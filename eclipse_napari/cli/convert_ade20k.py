"""Command line: convert the official ADEChallengeData2016 release into COCO-panoptic format.

    python -m eclipse_napari.convert_ade20k ROOT --out OUT [--splits training validation] [--workers N]

ROOT holds images/, annotations/ and annotations_instance/ (each with training/ and validation/).
Writes OUT/ade20k_panoptic_{train,val}.json and OUT/ade20k_panoptic_{train,val}/*.png; the JSON's images
refer to the jpgs in ROOT/images/{training,validation}. Re-running after an interruption is safe.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from model.data.ade20k import SPLITS, convert_ade20k_panoptic, split_dirs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eclipse_napari.convert_ade20k", description=__doc__.split("\n")[0])
    p.add_argument("root", help="the ADEChallengeData2016 folder")
    p.add_argument("--out", required=True, help="output folder for the panoptic JSONs and PNG folders")
    p.add_argument(
        "--splits",
        nargs="+",
        choices=tuple(SPLITS),
        default=list(SPLITS),
        help="splits to convert (default: training validation)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: the number of CPUs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        root = Path(args.root)
        if not root.is_dir():
            raise FileNotFoundError(f"ADE20K root folder not found: {root}")
        splits = list(dict.fromkeys(args.splits))
        for split in splits:  # every input folder is checked before any work starts
            split_dirs(root, args.out, split)
        for split in splits:
            path = convert_ade20k_panoptic(root, args.out, split, workers=args.workers, progress=not args.quiet)
            print(f"{split}: wrote {path} and {path.with_suffix('')}/")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
