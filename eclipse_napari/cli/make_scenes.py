"""Command line: write generated panoptic scenes (the CPU benchmark) in COCO-panoptic format.

    python -m eclipse_napari.make_scenes --out DIR [--train 2000] [--val 200] [--tune 200] [--size 256] [--seed 0] [--workers N]

DIR then holds scenes_{train,val,tune}.json, scenes_{train,val,tune}/ (panoptic PNGs) and images_{...}/ (RGB);
the tuning split is for choosing settings (its own seed), the validation split for reporting.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from model.data.scenes import SCENE_CATEGORIES, write_scenes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eclipse_napari.make_scenes", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--train", type=int, default=2000, help="number of training scenes")
    p.add_argument("--val", type=int, default=200, help="number of validation scenes")
    p.add_argument("--tune", type=int, default=200, help="number of tuning scenes (another seed; 0: none)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (non-negative)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.train < 0 or args.val < 0 or args.tune < 0 or args.seed < 0 or args.size < 16 or args.workers < 1:
        print("error: --train, --val, --tune and --seed must be >= 0, --size >= 16, --workers >= 1", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        paths = write_scenes(args.out, args.train, args.val, args.seed, args.size, args.workers, args.tune)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_thing = sum(c["isthing"] for c in SCENE_CATEGORIES)
    print(
        f"{args.train} train + {args.val} val + {args.tune} tune scenes of {args.size}x{args.size}, {len(SCENE_CATEGORIES)} categories "
        f"({n_thing} things, {len(SCENE_CATEGORIES) - n_thing} stuff), in {time.perf_counter() - start:.1f} s"
    )
    for key, path in paths.items():
        print(f"  {key}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
