"""Command line: panoptic segmentation of images with a saved model, written in COCO-panoptic format.

    python -m eclipse_napari.predict --model FOLDER IMAGE [IMAGE ...] --out FOLDER \\
        [--object-threshold 0.0] [--overlap-threshold 0.0] [--threads N] [--device cpu|cuda]

Writes FOLDER/panoptic/<stem>.png (segment ids as R + 256 G + 256^2 B), FOLDER/predictions.json
(annotations + categories, category ids = the model's 1-based class ids) and FOLDER/overlay/<stem>.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from model.io.images import INTENSITY_RULE, as_rgb, read_image, to_uint8, write_png
from model.io.model_files import load_model
from model.io.panoptic_format import segment_areas_and_boxes, write_panoptic_json, write_panoptic_png
from model.io.tensor_files import CheckpointError
from model.network.eclipse import EclipseModel
from model.network.tiled import TileConfig

OVERLAY_ALPHA = 0.5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eclipse_napari.predict",
        description=__doc__.split("\n")[0],
        epilog="files: read with scikit-image (PNG, JPEG, TIFF, ...) or numpy (.npy).\n" + INTENSITY_RULE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (model.json + base/step .safetensors)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="input images; output files are named by their stem")
    p.add_argument("--out", required=True, help="output folder (created if missing; existing outputs are replaced)")
    p.add_argument(
        "--object-threshold", type=float, default=0.0, help="drop queries whose class score is not above this (default 0)"
    )
    p.add_argument(
        "--overlap-threshold",
        type=float,
        default=0.0,
        help="drop segments keeping less than this fraction of their mask (default 0)",
    )
    p.add_argument("--tile", type=int, default=TileConfig.size,
                   help=f"images over {TileConfig.whole_up_to // 2**20} megapixel are predicted in tiles of this many "
                        "pixels, objects stitched across the seams (bounded memory); 0 = always whole "
                        "(default: %(default)s)")
    p.add_argument("--tile-overlap", type=int, default=TileConfig.overlap,
                   help="pixels neighbouring tiles share (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run the model (default: cpu)")
    return p


# --------------------------------------------------------------------------- images


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H,W,3] of an image file by INTENSITY_RULE; ImageError naming the file otherwise."""
    return as_rgb(to_uint8(read_image(path), where=str(path)))


# --------------------------------------------------------------------------- outputs


def segments_info(panoptic: np.ndarray, segments) -> list[dict]:
    """COCO-panoptic segments_info; area and bbox are measured on the written map."""
    boxes = segment_areas_and_boxes(panoptic)
    info = []
    for s in segments:
        if s.id not in boxes:  # nothing of it left on the map
            continue
        area, bbox = boxes[s.id]
        info.append(
            {
                "id": int(s.id),
                "category_id": int(s.category_id),
                "isthing": int(bool(s.is_thing)),
                "score": float(s.score),
                "area": area,
                "bbox": bbox,
            }
        )
    return info


def categories(model: EclipseModel) -> list[dict]:
    return [
        {"id": i, "name": c.name, "isthing": int(bool(c.is_thing)), "color": [int(v) for v in c.color]}
        for i, c in enumerate(model.classes, start=1)
    ]


def overlay(image: np.ndarray, panoptic: np.ndarray, segments, model: EclipseModel) -> np.ndarray:
    """The image blended with each segment's class colour; segment borders drawn in a darker shade."""
    from skimage.segmentation import find_boundaries

    colors = np.array([c.color for c in model.classes], dtype=np.float64).reshape(-1, 3)
    lut = np.zeros((int(panoptic.max(initial=0)) + 1, 3), dtype=np.float64)
    has_color = np.zeros(len(lut), dtype=bool)
    for s in segments:
        if s.id < len(lut):
            lut[s.id] = colors[s.category_id - 1]
            has_color[s.id] = True
    painted = has_color[panoptic]
    out = image.astype(np.float64)
    out[painted] = (1 - OVERLAY_ALPHA) * out[painted] + OVERLAY_ALPHA * lut[panoptic[painted]]
    border = find_boundaries(panoptic, mode="inner") & painted
    out[border] = 0.5 * lut[panoptic[border]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- main


def _check_args(args) -> list[Path]:
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    for name in ("object_threshold", "overlap_threshold"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if args.tile != 0:
        TileConfig(size=args.tile, overlap=args.tile_overlap)  # raises a clear ValueError on bad sizes
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    paths = [Path(p) for p in args.images]
    by_stem: dict[str, list[str]] = {}
    for p in paths:
        by_stem.setdefault(p.stem, []).append(str(p))
    clashes = {s: ps for s, ps in by_stem.items() if len(ps) > 1}
    if clashes:
        raise ValueError(f"several images would write the same output files (same name stem): {clashes}")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = _check_args(args)
        for path in paths:  # refuse bad input before anything is written
            load_image(path)
        model = load_model(args.model, args.device).eval()
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    tiles = None if args.tile == 0 else TileConfig(size=args.tile, overlap=args.tile_overlap)
    out = Path(args.out)
    try:
        (out / "panoptic").mkdir(parents=True, exist_ok=True)
        (out / "overlay").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: --out {out}: cannot create the output folders ({e})", file=sys.stderr)
        return 1

    annotations, images = [], []
    for path in paths:
        try:
            image = load_image(path)
            start = time.perf_counter()
            result = model.predict_image(image, tiles, object_threshold=args.object_threshold,
                                         overlap_threshold=args.overlap_threshold)
            seconds = time.perf_counter() - start
            panoptic = result.panoptic_seg.cpu().numpy().astype(np.int64)
            info = segments_info(panoptic, result.segments)
            png = f"{path.stem}.png"
            write_panoptic_png(out / "panoptic" / png, panoptic)
            write_png(out / "overlay" / png, overlay(image, panoptic, result.segments, model))
        except (ValueError, OSError, RuntimeError) as e:
            print(f"error: {path}: {e}" if str(path) not in str(e) else f"error: {e}", file=sys.stderr)
            return 1
        h, w = panoptic.shape
        images.append({"id": path.stem, "file_name": path.name, "height": h, "width": w})
        annotations.append({"image_id": path.stem, "file_name": png, "segments_info": info})
        things = sum(s["isthing"] for s in info)
        print(
            f"{path}: {len(info)} segments ({things} things, {len(info) - things} stuff) "
            f"in {seconds:.2f} s -> {out / 'panoptic' / png}"
        )

    data = {
        "info": {
            "model": str(args.model),
            "object_threshold": args.object_threshold,
            "overlap_threshold": args.overlap_threshold,
        },
        "images": images,
        "annotations": annotations,
        "categories": categories(model),
    }
    write_panoptic_json(out / "predictions.json", data)
    print(f"wrote {len(annotations)} predictions to {out / 'predictions.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
