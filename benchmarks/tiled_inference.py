"""Tiled against whole-image inference: memory and time on a large image, PQ on mosaics of scenes.

    python benchmarks/tiled_inference.py                       # 4000x4000, 4 mosaics of 1024x1024, 2 threads
    python benchmarks/tiled_inference.py --size 2048 --skip-whole

Memory: each measurement runs in its own process (a fresh peak): the peak resident memory after
the prediction, less the resident memory once the model is loaded and the image made. The large
image is a mosaic of generated scenes (objects at the shipped model's scale). Quality: PQ of the base
classes on mosaics of 4x4 validation scenes (1024x1024, seams of the mosaic are not tile seams),
predicted whole and tiled (tiling forced). Writes results.json and results.txt into --out.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eclipse_napari.resources import shipped_base_path  # noqa: E402
from model.data.scenes import SCENE_CLASSES, generate_scene  # noqa: E402
from model.evaluation.metrics import PanopticQuality  # noqa: E402
from model.io.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from model.io.model_files import load_model  # noqa: E402
from model.network.tiled import TileConfig, tile_grid  # noqa: E402

SCENE = 256
THING_IDS = {i for i, c in enumerate(SCENE_CLASSES, start=1) if c.isthing}
VALIDATION_SEED = 1  # the shipped model was trained on seed 0


def mosaic(side: int, seed: int, start: int, known: int):
    """A side x side image of 256-pixel scenes, with its panoptic truth (classes above `known` void)."""
    n = -(-side // SCENE)
    image = np.zeros((n * SCENE, n * SCENE, 3), np.uint8)
    ids = np.zeros((n * SCENE, n * SCENE), np.int32)
    segments, offset = [], 0
    for k in range(n * n):
        img, scene_ids, segs = generate_scene(start + k, seed=seed, size=SCENE)
        y, x = divmod(k, n)
        sl = (slice(y * SCENE, (y + 1) * SCENE), slice(x * SCENE, (x + 1) * SCENE))
        image[sl] = img
        keep = {s["id"] for s in segs if s["category_id"] <= known}
        ids[sl] = np.where(np.isin(scene_ids, list(keep)), scene_ids + offset, 0)
        segments += [{**s, "id": s["id"] + offset} for s in segs if s["id"] in keep]
        offset += max((s["id"] for s in segs), default=0)
    ids, segments = ids[:side, :side], [s for s in segments if (ids[:side, :side] == s["id"]).any()]
    # Stuff is one segment per class and image (the panoptic convention): join the scenes' stuff regions.
    first: dict[int, int] = {}
    for s in segments:
        if s.get("isthing", s["category_id"] in THING_IDS) or s.get("iscrowd"):
            continue
        keep = first.setdefault(s["category_id"], s["id"])
        ids[ids == s["id"]] = keep
    segments = [s for s in segments if s["id"] in set(np.unique(ids).tolist())]
    return image[:side, :side], ids, segments


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(mode: str, side: int, threads: int, tile: int, overlap: int) -> dict:
    torch.set_num_threads(threads)
    model = load_model(shipped_base_path()).eval()
    image, _, _ = mosaic(side, VALIDATION_SEED, 10_000, model.num_classes)
    with torch.inference_mode():
        model.predict(image[:SCENE, :SCENE])  # warm-up: lazy allocations belong to the model
    before = rss_gib()
    config = TileConfig(size=tile, overlap=overlap, whole_up_to=0) if mode == "tiled" else None
    start = time.perf_counter()
    with torch.inference_mode():
        result = model.predict_image(image, config)
    seconds = time.perf_counter() - start
    tiles = len(tile_grid(side, side, config)) if config else 1
    return {"mode": mode, "side": side, "seconds": seconds, "peak_above_model_gib": rss_gib() - before,
            "model_and_image_gib": before, "tiles": tiles, "segments": len(result.segments)}


def measure(mode: str, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--size", str(args.size), "--threads",
                          str(args.threads), "--tile", str(args.tile), "--overlap", str(args.overlap)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def quality(args) -> dict:
    torch.set_num_threads(args.threads)
    model = load_model(shipped_base_path()).eval()
    categories = {i + 1: c.is_thing for i, c in enumerate(model.classes)}
    config = TileConfig(size=args.tile, overlap=args.overlap, whole_up_to=0)
    pqs = {"whole": PanopticQuality(categories), "tiled": PanopticQuality(categories)}
    seconds = {"whole": 0.0, "tiled": 0.0}
    for m in range(args.mosaics):
        image, ids, segments = mosaic(1024, VALIDATION_SEED, 20_000 + 16 * m, model.num_classes)
        for mode, tiles in (("whole", None), ("tiled", config)):
            start = time.perf_counter()
            with torch.inference_mode():
                result = model.predict_image(image, tiles)
            seconds[mode] += time.perf_counter() - start
            predicted = [{"id": s.id, "category_id": s.category_id, "iscrowd": 0} for s in result.segments]
            pqs[mode].update(ids, segments, result.panoptic_seg.numpy(), predicted)
    out = {}
    for mode, pq in pqs.items():
        summary = pq.summary()
        out[mode] = {"seconds": seconds[mode]} | {f"{k.lower()}_{m}": 100 * getattr(summary[k], m)
                                                  for k in ("All", "Things", "Stuff") for m in ("pq", "sq", "rq")}
    out["tiles_per_image"] = len(tile_grid(1024, 1024, config))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=4000, help="side of the large image (default 4000: 16 MP)")
    p.add_argument("--mosaics", type=int, default=4, help="1024x1024 mosaics for the quality check")
    p.add_argument("--tile", type=int, default=TileConfig.size)
    p.add_argument("--overlap", type=int, default=TileConfig.overlap)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-whole", action="store_true", help="do not run whole-image inference on the large image")
    p.add_argument("--skip-large", action="store_true", help="only the quality check on 1024x1024 mosaics")
    p.add_argument("--out", type=Path, default=Path("runs/tiled_inference"))
    p.add_argument("--child", choices=("tiled", "whole"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.size, args.threads, args.tile, args.overlap)))
        return 0
    runs = [] if args.skip_large else [measure("tiled", args)] + ([] if args.skip_whole else [measure("whole", args)])
    q = quality(args)
    lines = [f"{args.size}x{args.size} image ({args.size**2 / 1e6:.0f} MP), {args.threads} threads, "
             f"tiles of {args.tile} px, overlap {args.overlap}",
             f"{'mode':<8}{'tiles':>7}{'seconds':>10}{'peak above model':>18}{'segments':>10}"]
    for r in runs:
        lines.append(f"{r['mode']:<8}{r['tiles']:>7}{r['seconds']:>10.1f}{r['peak_above_model_gib']:>14.2f} GiB"
                     f"{r['segments']:>10}")
    if len(runs) == 2:
        lines.append(f"tiled/whole: time {runs[0]['seconds'] / runs[1]['seconds']:.2f}x, memory "
                     f"{runs[0]['peak_above_model_gib'] / max(runs[1]['peak_above_model_gib'], 1e-9):.2f}x")
    lines += ["", f"PQ of the base classes on {args.mosaics} mosaics of 4x4 scenes (1024x1024, "
              f"{q['tiles_per_image']} tiles each when tiled)",
              f"{'mode':<8}{'PQ':>7}{'SQ':>7}{'RQ':>7}{'PQ th':>7}{'PQ st':>7}{'seconds':>10}"]
    for mode in ("whole", "tiled"):
        r = q[mode]
        lines.append(f"{mode:<8}{r['all_pq']:7.1f}{r['all_sq']:7.1f}{r['all_rq']:7.1f}{r['things_pq']:7.1f}"
                     f"{r['stuff_pq']:7.1f}{r['seconds']:10.1f}")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", {"settings": {k: v for k, v in vars(args).items() if k != "out"}
                                                  | {"out": str(args.out)}, "large": runs, "quality": q})
    atomic_write_text(args.out / "results.txt", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
