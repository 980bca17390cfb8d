"""How well does Learn learn a new class? Learners side by side on the same painted examples.

    python benchmarks/learn_quality.py                          # every case and learner, 2 threads
    python benchmarks/learn_quality.py --cases crowded coins --learners learn peer
    python benchmarks/learn_quality.py --split tuning           # the images settings are chosen on

Learners (each starts from the shipped base model; the peer needs scikit-learn: pip install -e '.[bench]'):
- published: the ECLIPSE prompt step as published (10 prompts from the mean of the base queries, the
  published losses; unpainted pixels are "not this class"), with the settings measured for it
  (`LearnConfig.prompts()`), delta chosen on the painted images;
- learn: the project's Learn (`LearnConfig()`: a dense step);
- peer: a random-forest pixel classifier on a filter bank, then instances (benchmarks/pixel_classifier.py);
- upper: the project's Learn trained on many labelled images (where a case has them), twice the
  iterations.
Cases (benchmarks/learn_cases.py): scene things and stuff from 3 painted scenes, a crowded scene painted
completely or partly (5 instances + 5 background strokes), and scikit-image's coins photo with labels
made and checked by hand (tests/data/coins). Per case and learner: PQ of the new class on held-out
images (every other pixel counts as "not the class", so false positives cost), and, for the learners
that change the model, the share of pixels whose class is unchanged on unrelated images that hold no
instance of the class, and the seconds from pressing Learn to refreshed predictions of the painted
images. Writes results.json, results.txt and learn_quality.png into --out.
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

from learn_cases import CASE_NAMES, build_cases  # noqa: E402

from eclipse_napari.resources import shipped_base_path  # noqa: E402
from model.evaluation.metrics import PanopticQuality  # noqa: E402
from model.interactive.config import LearnConfig  # noqa: E402
from model.interactive.learn import learn_class  # noqa: E402
from model.io.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from model.io.model_files import load_model  # noqa: E402

LEARNERS = ("published", "learn", "peer", "upper")
NEW, OTHER = 1, 2  # the two categories of the one-class PQ


def one_class_pq(is_thing: bool) -> PanopticQuality:
    return PanopticQuality({NEW: is_thing, OTHER: False})


def add_one_class(pq: PanopticQuality, truth: np.ndarray, predicted: np.ndarray, is_thing: bool) -> None:
    """Adds one image: instances of the class (0 = not the class) against predicted instances."""

    def segments(instances):
        ids = [int(i) for i in np.unique(instances) if i > 0]
        other = max(ids, default=0) + 1
        id_map = np.where(instances > 0, instances, other).astype(np.int64)
        segs = [{"id": i, "category_id": NEW, "iscrowd": 0} for i in ids]
        if (instances == 0).any():
            segs.append({"id": other, "category_id": OTHER, "iscrowd": 0})
        return id_map, segs

    if not is_thing:  # stuff: one segment per image
        truth, predicted = (truth > 0).astype(np.int32), (predicted > 0).astype(np.int32)
    pq.update(*segments(truth), *segments(predicted))


def class_instances(result, class_id: int) -> np.ndarray:
    panoptic = result.panoptic_seg.numpy()
    ids = [s.id for s in result.segments if s.category_id == class_id]
    return np.where(np.isin(panoptic, ids), panoptic, 0).astype(np.int32)


def unrelated_effect(before: list[np.ndarray], model, images, class_id: int) -> dict:
    """On images without the class: of the pixels the model gave an old class before, the share that
    keeps it (pooled and worst image), and the share of all pixels the new class claims."""
    kept = held = claimed = total = 0
    worst = 1.0
    for semantic, image in zip(before, images):
        after = model.predict(image).semantic.numpy()
        old = semantic > 0
        k = int((after[old] == semantic[old]).sum())
        kept, held = kept + k, held + int(old.sum())
        worst = min(worst, k / old.sum()) if old.any() else worst
        claimed, total = claimed + int((after == class_id).sum()), total + after.size
    return {"kept": 100 * kept / max(held, 1), "kept_worst": 100 * worst, "claimed": 100 * claimed / total}


def summary(pq: PanopticQuality) -> dict:
    r = pq.compute()[NEW]
    return {"pq": 100 * r.pq, "sq": 100 * r.sq, "rq": 100 * r.rq, "tp": r.tp, "fp": r.fp, "fn": r.fn}


def run_model_learner(case, learner: str, base_path: Path, before: list[np.ndarray], iterations_scale: float = 1.0):
    config = LearnConfig.prompts() if learner == "published" else LearnConfig()
    examples = case.upper if learner == "upper" else case.examples
    if learner == "upper":
        config = replace(config, iterations=int(config.iterations * 2))
    config = replace(config, iterations=max(1, int(config.iterations * iterations_scale)))
    model = load_model(base_path).eval()
    start = time.perf_counter()
    context = case.context if learner != "upper" else []
    result = learn_class(model, case.class_name, case.is_thing, examples, config, context=context)
    for e in case.examples:  # the refresh the plugin does: predictions of the painted images
        model.predict(e.image)
    seconds = time.perf_counter() - start
    pq = one_class_pq(case.is_thing)
    for image, truth in case.heldout:
        add_one_class(pq, truth, class_instances(model.predict(image), result.class_id), case.is_thing)
    return {**summary(pq), "seconds": seconds, **unrelated_effect(before, model, case.unrelated, result.class_id),
            "trainable": model.num_trainable_parameters(), "delta": result.delta, "images": len(examples)}


def run_peer(case):
    from pixel_classifier import PixelClassifier

    start = time.perf_counter()
    peer = PixelClassifier(case.is_thing).fit(case.examples)
    for e in case.examples:
        peer.predict(e.image)
    seconds = time.perf_counter() - start
    pq = one_class_pq(case.is_thing)
    for image, truth in case.heldout:
        add_one_class(pq, truth, peer.predict(image), case.is_thing)
    return {**summary(pq), "seconds": seconds, "images": len(case.examples)}


def format_table(rows: dict, learners) -> str:
    head = f"{'case':<18}" + "".join(f"{name:>22}" for name in learners) + f"{'learn/peer':>12}"
    lines = ["PQ of the new class on held-out images (TP/FP/FN)", head]
    for case, results in rows.items():
        cells = []
        for name in learners:
            r = results.get(name)
            cells.append(f"{'n/a':>22}" if r is None else f"{r['pq']:6.1f} ({r['tp']}/{r['fp']}/{r['fn']})".rjust(22))
        learn, peer = results.get("learn"), results.get("peer")
        ratio = f"{learn['pq'] / peer['pq']:.2f}x" if learn and peer and peer["pq"] > 0 else "-"
        lines.append(f"{case:<18}" + "".join(cells) + f"{ratio:>12}")
    lines.append("")
    lines.append("On unrelated images (no instance of the class): old-class pixels kept (worst image), share of "
                 "pixels the new class claims; seconds from Learn to refreshed predictions")
    lines.append(f"{'case':<18}" + "".join(f"{n:>36}" for n in learners if n != "peer"))
    for case, results in rows.items():
        cells = []
        for name in learners:
            if name == "peer":
                continue
            r = results.get(name)
            cells.append(f"{'n/a':>36}" if r is None else
                         f"{r['kept']:5.1f}% ({r['kept_worst']:5.1f}%) {r['claimed']:5.1f}% {r['seconds']:5.1f} s".rjust(36))
        lines.append(f"{case:<18}" + "".join(cells))
    return "\n".join(lines)


def plot(rows: dict, learners, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(rows)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cases)), 3.8))
    width = 0.8 / len(learners)
    for k, name in enumerate(learners):
        values = [rows[c].get(name, {}).get("pq", 0.0) for c in cases]
        ax.bar(np.arange(len(cases)) + (k - (len(learners) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(np.arange(len(cases)), cases, rotation=30, ha="right")
    ax.set_ylabel("PQ of the new class")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASE_NAMES), help=f"of {list(CASE_NAMES)}")
    p.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=LEARNERS)
    p.add_argument("--split", choices=("heldout", "tuning"), default="heldout")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations-scale", type=float, default=1.0, help="scale every learner's iterations (quick runs)")
    p.add_argument("--out", type=Path, default=Path("runs/learn_quality"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base_path = shipped_base_path()
    base = load_model(base_path).eval()
    start = time.perf_counter()
    cases = build_cases(args.split, args.cases)
    print(f"{len(cases)} cases built in {time.perf_counter() - start:.0f} s")
    rows, records = {}, {}
    for case in cases:
        before = [base.predict(image).semantic.numpy() for image in case.unrelated]
        results = {}
        for learner in args.learners:
            if learner == "upper" and not case.upper:
                continue
            results[learner] = run_peer(case) if learner == "peer" else run_model_learner(
                case, learner, base_path, before, args.iterations_scale)
            r = results[learner]
            print(f"{case.name:<18} {learner:<10} PQ {r['pq']:5.1f} ({r['tp']}/{r['fp']}/{r['fn']}) "
                  f"{r['seconds']:5.1f} s" + (f", kept {r['kept']:.1f}% (worst {r['kept_worst']:.1f}%), claimed "
                                              f"{r['claimed']:.1f}%" if "kept" in r else ""),
                  flush=True)
        rows[case.name] = results
        records[case.name] = {"class": case.class_name, "thing": case.is_thing, "note": case.note,
                              "heldout_images": len(case.heldout), "unrelated_images": len(case.unrelated),
                              "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows, args.learners)
    settings = {"split": args.split, "threads": args.threads, "iterations_scale": args.iterations_scale,
                "learn": LearnConfig().__dict__ | {"augment": LearnConfig().augment.__dict__},
                "published": LearnConfig.prompts().__dict__ | {"augment": LearnConfig.prompts().augment.__dict__},
                "seconds": time.perf_counter() - start}
    atomic_write_json(args.out / "results.json", {"settings": settings, "cases": records}, sort_keys=False)
    atomic_write_text(args.out / "results.txt", table + "\n")
    plot(rows, args.learners, args.out / "learn_quality.png")
    print()
    print(table)
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.txt'}, {args.out / 'learn_quality.png'} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
