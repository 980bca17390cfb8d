"""Command line: panoptic quality of COCO-panoptic predictions, with optional old/new class groups.

    python -m eclipse_napari.evaluate --gt-json gt.json --gt-folder gt/ \\
        --pred-json pred.json --pred-folder pred/ [--num-base N] [--class-order ID,ID,...] [--out r.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model.evaluation.metrics import format_pq_table
from model.evaluation.pq_compute import pq_compute, read_categories
from model.io.atomic import atomic_write_json
from model.io.panoptic_format import read_panoptic_json


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer ids, got {text!r}") from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eclipse_napari.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--gt-json", required=True, help="COCO-panoptic gt JSON (its categories are used)")
    p.add_argument("--gt-folder", required=True, help="folder of gt PNGs")
    p.add_argument("--pred-json", required=True, help="COCO-panoptic prediction JSON")
    p.add_argument("--pred-folder", required=True, help="folder of prediction PNGs")
    p.add_argument("--num-base", type=int, default=None, help="report old = first N classes, new = the rest")
    p.add_argument(
        "--class-order",
        type=_parse_ids,
        default=None,
        help="category ids in learning order (default: the gt json's category order)",
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def class_groups(category_ids: Sequence[int], num_base: int | None, order: Sequence[int] | None) -> dict:
    """{"old": first num_base ids in order, "new": the rest}, or {} without num_base."""
    if order is not None:
        if sorted(order) != sorted(category_ids) or len(set(order)) != len(order):
            raise ValueError(
                "--class-order must list every gt category id exactly once; "
                f"missing {sorted(set(category_ids) - set(order))}, "
                f"unknown {sorted(set(order) - set(category_ids))}, "
                f"repeated {sorted({i for i in order if list(order).count(i) > 1})}"
            )
    if num_base is None:
        return {}
    order = list(order) if order is not None else list(category_ids)
    if not 1 <= num_base <= len(order):
        raise ValueError(f"--num-base must be in [1, {len(order)}], got {num_base}")
    return {"old": order[:num_base], "new": order[num_base:]}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        categories = read_categories(read_panoptic_json(args.gt_json), args.gt_json)
        groups = class_groups(list(categories), args.num_base, args.class_order)
        results = pq_compute(args.gt_json, args.gt_folder, args.pred_json, args.pred_folder, groups=groups)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_pq_table(results["summary"]))
    print(f"({results['num_images']} images)")
    if args.out:
        results["groups"] = {k: list(v) for k, v in groups.items()}
        atomic_write_json(args.out, results, sort_keys=False)
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
