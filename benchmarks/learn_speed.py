"""How fast does Learn teach a new class? New-class PQ against seconds since pressing Learn.

With the shipped base model on CPU, one new class (default: horse) is taught from 3 annotated scenes
(its ground-truth instances, as a user would paint them), exactly as the napari widget's Learn does
(`model.interactive.learn_class`: add a step, train it on the cached features; for the published prompt
step, `--learner prompts`, choose delta on the examples). Snapshots of the step are taken every few
seconds while it trains; afterwards each is evaluated (prompt steps: with Learn's delta selection) on
held-out scenes: PQ of the new class. A long run on the same 3 images gives the reference PQ.

    python benchmarks/learn_speed.py                      # default Learn settings (a dense step), 2 threads
    python benchmarks/learn_speed.py --long-iterations 2000 --out runs/learn_speed

Writes results.json and a table (results.txt) into --out.
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learn_cases import SCENE_SEEDS  # noqa: E402

from eclipse_napari.resources import shipped_base_path  # noqa: E402
from model.data.labelled import LabelledImage
from model.data.scenes import SCENE_CLASSES, generate_scene
from model.evaluation.deltas import select_deltas
from model.evaluation.evaluate import evaluate
from model.interactive.config import Example, LearnConfig
from model.interactive.examples import labelled as labelled_example
from model.interactive.learn import learn_class
from model.io.atomic import atomic_write_json, atomic_write_text
from model.io.model_files import load_model
from model.training.progress import RunState

# The tuning split of benchmarks/learn_quality.py (scenes the shipped model never saw: it was trained on
# seed 0): Learn's settings are chosen here, so nothing reported on the held-out split is tuned on.
TRAIN_SEED, VAL_SEED = SCENE_SEEDS["tuning"]


def scenes_with(class_id: int, seed: int, count: int, min_area: int = 600):
    """The first `count` scenes of `seed` that show the class with at least `min_area` pixels."""
    out, index = [], 0
    while len(out) < count:
        image, ids, segments = generate_scene(index, seed=seed)
        if sum(s["area"] for s in segments if s["category_id"] == class_id and not s["iscrowd"]) >= min_area:
            out.append((image, ids, segments))
        index += 1
    return out


def instances_of(ids: np.ndarray, segments: list[dict], class_id: int) -> np.ndarray:
    out = np.zeros(ids.shape, np.int32)
    for k, s in enumerate([s for s in segments if s["category_id"] == class_id and not s["iscrowd"]], 1):
        out[ids == s["id"]] = k
    return out


def val_images(class_id: int, new_id: int, num_base: int, count: int) -> list[LabelledImage]:
    """Held-out scenes in the model's ids: base classes as they are, the new class as `new_id`, every
    other (not yet learned) class void."""
    out = []
    for index in range(count):
        image, ids, segments = generate_scene(index, seed=VAL_SEED)
        keep = []
        for s in segments:
            if s["category_id"] <= num_base or s["category_id"] == class_id:
                cid = s["category_id"] if s["category_id"] <= num_base else new_id
                keep.append({"id": s["id"], "category_id": cid, "iscrowd": s["iscrowd"]})
        kept = {s["id"] for s in keep}
        out.append(LabelledImage(image, np.where(np.isin(ids, list(kept)), ids, 0), keep))
    return out


def run(model, examples, class_name, is_thing, config, snapshot_every: float, log):
    """learn_class with snapshots of the new step's tensors every `snapshot_every` seconds of wall time."""
    snapshots, start = [], time.perf_counter()
    next_at = snapshot_every

    def callback(p):
        nonlocal next_at
        now = time.perf_counter() - start
        if now >= next_at and p.state == RunState.RUNNING:
            group = model.groups[-1]
            snapshots.append((now, p.iteration, {k: v.detach().clone() for k, v in group.state_dict().items()}))
            next_at += snapshot_every

    result = learn_class(model, class_name, is_thing, examples, config, callback=callback)
    total = time.perf_counter() - start
    log(f"  {config.iterations} iterations, lr {config.lr:g}: done in {total:.1f} s "
        f"(training {result.seconds:.1f} s), delta {result.delta}")
    return result, total, snapshots


def evaluate_new(model, val, new_id: int) -> float:
    pq = evaluate(model, val)["pq_per_class"][new_id]
    return 100 * pq.pq


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--class-name", default="horse")
    p.add_argument("--learner", choices=("dense", "prompts"), default="dense",
                   help="Learn's default dense step, or the published prompt step (LearnConfig.prompts())")
    p.add_argument("--images", type=int, default=3, help="annotated images")
    p.add_argument("--iterations", type=int, default=None, help="Learn iterations (default: LearnConfig's)")
    p.add_argument("--lr", type=float, default=None, help="Learn learning rate (default: LearnConfig's)")
    p.add_argument("--long-iterations", type=int, default=1500, help="the long reference run")
    p.add_argument("--val-images", type=int, default=150)
    p.add_argument("--snapshot-every", type=float, default=10.0, help="seconds between curve points")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/learn_speed"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    log = print

    names = [c.name for c in SCENE_CLASSES]
    class_id = names.index(args.class_name) + 1
    is_thing = SCENE_CLASSES[class_id - 1].isthing
    model = load_model(shipped_base_path()).eval()
    num_base, new_id = model.num_classes, model.num_classes + 1
    if class_id <= num_base:
        raise SystemExit(f"{args.class_name!r} is already a class of the shipped model")
    scenes = scenes_with(class_id, TRAIN_SEED, args.images)
    examples = [Example(img, instances_of(ids, segs, class_id), complete=True) for img, ids, segs in scenes]
    val = val_images(class_id, new_id, num_base, args.val_images)
    log(f"teaching {args.class_name!r} from {len(examples)} images "
        f"({sum(int(e.instances.max()) for e in examples)} instances); {len(val)} held-out scenes")

    reference = [model.predict(e.image) for e in examples]  # before the step, as Learn
    default = LearnConfig.for_learner(args.learner)
    config = replace(default, iterations=args.iterations or default.iterations, lr=args.lr or default.lr)
    result, total, snapshots = run(model, examples, args.class_name, is_thing, config, args.snapshot_every, log)
    final_pq = evaluate_new(model, val, new_id)
    final_deltas = model.deltas

    # Curve: each snapshot gets Learn's delta selection (timed) and is scored on the held-out scenes.
    labelled = [labelled_example(e, [new_id]) for e in examples]
    group, final_state = model.groups[-1], {k: v.clone() for k, v in model.groups[-1].state_dict().items()}
    curve = []
    for seconds, iteration, state in snapshots:
        group.load_state_dict(state)
        t0 = time.perf_counter()
        if args.learner == "prompts":  # a dense step has no delta to choose
            deltas, _ = select_deltas(model, labelled, reference)
            model.set_deltas(deltas)
        select_seconds = time.perf_counter() - t0
        curve.append({"seconds": round(seconds + select_seconds, 1), "iteration": iteration,
                      "pq_new": round(evaluate_new(model, val, new_id), 2)})
    group.load_state_dict(final_state)
    model.set_deltas(final_deltas)
    curve.append({"seconds": round(total, 1), "iteration": config.iterations, "pq_new": round(final_pq, 2)})

    # The long reference run, from the same base model (--long-iterations 0 skips it).
    long = None
    if args.long_iterations > 0:
        long_model = load_model(shipped_base_path()).eval()
        long_config = replace(config, iterations=args.long_iterations)
        _, long_total, _ = run(long_model, examples, args.class_name, is_thing, long_config, 1e9, log)
        long = {"iterations": long_config.iterations, "lr": long_config.lr, "seconds": round(long_total, 1),
                "pq_new": round(evaluate_new(long_model, val, new_id), 2), "deltas": long_model.deltas}
    long_pq = long["pq_new"] if long else float("nan")

    within = [c for c in curve if c["seconds"] <= 60.0]
    best60 = max((c["pq_new"] for c in within), default=0.0)
    results = {
        "class": args.class_name, "images": len(examples), "threads": args.threads, "val_images": len(val),
        "learn": {"iterations": config.iterations, "lr": config.lr, "seconds": round(total, 1),
                  "pq_new": round(final_pq, 2), "deltas": final_deltas,
                  "painted_kept_outside_painting": result.painted.kept},
        "curve": curve,
        "long": long,
        "pq_within_60s": best60,
        "ratio_within_60s": round(best60 / long_pq, 3) if long_pq > 0 else None,
        "final_ratio": round(final_pq / long_pq, 3) if long_pq > 0 else None,
    }
    lines = [f"Learn {args.class_name!r} from {len(examples)} images, {args.threads} CPU threads; "
             f"new-class PQ on {len(val)} held-out scenes",
             f"{'seconds':>8} {'iteration':>9} {'PQ new':>7}"]
    lines += [f"{c['seconds']:8.1f} {c['iteration']:9d} {c['pq_new']:7.1f}" for c in curve]
    if long:
        lines.append(f"long run: {long['iterations']} iterations, {long['seconds']:.0f} s, PQ new {long_pq:.1f}")
    lines.append(f"Learn finished {total:.0f} s after pressing it, at PQ new {final_pq:.1f} = "
                 f"{100 * (results['final_ratio'] or 0):.0f}% of the long run "
                 f"(best curve point within 60 s: {best60:.1f})")
    text = "\n".join(lines)
    log(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", results)
    atomic_write_text(args.out / "results.txt", text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
