"""How well does Learn learn new classes? Learners side by side on the same painted examples.

    python benchmarks/learn_quality.py --split tuning     # first: where settings (and the peers'
                                                          # post-processing) are chosen
    python benchmarks/learn_quality.py                    # every case and learner on the held-out split
    python benchmarks/learn_quality.py --cases coins "ihc partial" --learners learn "cnn forest"
    python benchmarks/learn_quality.py --learners learn "filter forest" --seeds 3   # learn trained 3 times

Learners (the model learners start from the shipped base model; the peers need scikit-learn):
- published: the ECLIPSE prompt step as published (10 prompts from the mean of the base queries, the
  published losses), `LearnConfig.prompts()`, reading the painting as Learn does (unpainted pixels of an
  image not marked complete are unknown) and its delta chosen on the painted images with the known
  background counting against it;
- adaptive: a prompt step with image-adaptive queries (`LearnConfig.adaptive()`: up to 100 queries per
  image, started at the peaks of a per-step scorer, see model/network/adaptive_queries.py), read and its
  delta chosen as published's;
- learn: the project's Learn (`LearnConfig()`: a dense step);
- filter forest / cnn forest / cnn+filter forest: random-forest pixel classifiers as ilastik/APOC and
  napari-convpaint run them (benchmarks/peers.py), each with the better of two post-processings
  (connected components or a distance watershed) chosen per case on the tuning split and read from
  benchmarks/peer_postprocessing.json on the held-out split;
- upper: Learn trained on many labelled images (where a case has them), twice the iterations.
What each learner is given: the peers get the painting only; the model learners also take what the base
model holds confidently for an old class (on the painted images and on up to 4 other open images) as
negatives.

Cases: benchmarks/learn_cases.py. Per case, class and learner: PQ, SQ and TP/FP/FN (a stuff class: PQ and
pixel IoU) of the class on held-out images (every other pixel counts as "not the class", so false
positives cost); for the model learners, the share of old-class pixels kept on unrelated images and
the seconds from pressing Learn to refreshed predictions of the painted images. With --seeds N each
model learner is trained N times (seeds from LearnConfig.seed on) and a second table gives each class's
PQ over them: a step retrained with another seed can differ a lot (the forest's share of the blend,
chosen on the painting, flips). Writes results.json, results.txt and learn_quality.png
into --out (the tuning split also writes the peers' post-processing choice).
"""

import argparse
import json
import sys
import time
import typing
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learn_cases import CASE_NAMES, build_cases  # noqa: E402
from peers import PEERS, POSTPROCESSING, build_peer  # noqa: E402

from eclipse_napari.resources import shipped_base_path  # noqa: E402
from model.evaluation.metrics import PanopticQuality  # noqa: E402
from model.interactive.config import LearnConfig, NewClass  # noqa: E402
from model.interactive.learn import learn_classes  # noqa: E402
from model.io.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from model.io.model_files import load_model  # noqa: E402

MODEL_LEARNERS = ("published", "adaptive", "learn", "upper")
LEARNERS = ("published", "adaptive", "learn", *PEERS, "upper")
NEW, OTHER = 1, 2  # the two categories of the one-class PQ
CHOICE_FILE = Path(__file__).resolve().parent / "peer_postprocessing.json"


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


def unrelated_effect(before: list[np.ndarray], model, images, class_ids) -> dict:
    """On images without the classes: of the pixels the model gave an old class before, the share that
    keeps it (pooled and worst image), and the share of all pixels the new classes claim."""
    kept = held = claimed = total = 0
    worst = 1.0
    for semantic, image in zip(before, images):
        after = model.predict(image).semantic.numpy()
        old = semantic > 0
        k = int((after[old] == semantic[old]).sum())
        kept, held = kept + k, held + int(old.sum())
        worst = min(worst, k / old.sum()) if old.any() else worst
        claimed, total = claimed + int(np.isin(after, class_ids).sum()), total + after.size
    return {"kept": 100 * kept / max(held, 1), "kept_worst": 100 * worst, "claimed": 100 * claimed / total}


def summary(pq: PanopticQuality) -> dict:
    r = pq.compute()[NEW]
    return {"pq": 100 * r.pq, "sq": 100 * r.sq, "rq": 100 * r.rq, "tp": r.tp, "fp": r.fp, "fn": r.fn}


def score(case, predict) -> list[dict]:
    """Per class of the case, the PQ summary of `predict(image) -> per class instance maps` on its
    held-out images, with the class's pixel IoU over them ("iou", pooled: a stuff segment under IoU 0.5
    scores 0 PQ, so PQ alone cannot tell a near miss from nothing)."""
    pqs = [one_class_pq(thing) for _, thing in case.classes]
    pixels = np.zeros((len(case.classes), 2), np.int64)  # per class: intersection, union
    for image, truths in case.heldout:
        for k, (pq, truth, predicted, (_, thing)) in enumerate(zip(pqs, truths, predict(image), case.classes)):
            add_one_class(pq, truth, predicted, thing)
            true, found = np.asarray(truth) > 0, np.asarray(predicted) > 0
            pixels[k] += (int((true & found).sum()), int((true | found).sum()))
    return [summary(pq) | {"iou": 100 * float(i) / max(int(u), 1)} for pq, (i, u) in zip(pqs, pixels)]


def run_model_learner(case, learner: str, base_path: Path, before: list[np.ndarray], config: LearnConfig) -> dict:
    painted = case.upper if learner == "upper" else case.painted
    if learner == "upper":
        config = replace(config, iterations=int(config.iterations * 2))
    model = load_model(base_path).eval()
    classes = [NewClass(name, thing, list(examples)) for (name, thing), examples in zip(case.classes, painted)]
    start = time.perf_counter()
    try:
        result = learn_classes(model, classes, config, context=case.context if learner != "upper" else [])
    except ValueError as exc:  # Learn refuses what cannot be learned, and says why
        return {"refused": str(exc)}
    for examples in painted:  # the refresh the plugin does: predictions of the painted images
        for e in examples:
            model.predict(e.image)
    seconds = time.perf_counter() - start

    def predict(image):
        result_image = model.predict(image)
        return [class_instances(result_image, c) for c in result.class_ids]

    return {"classes": score(case, predict), "seconds": seconds,
            **unrelated_effect(before, model, case.unrelated, result.class_ids),
            "trainable": model.num_trainable_parameters(), "delta": result.delta,
            "images": sum(len(e) for e in painted)}


def run_peer(case, name: str, base, choice: str | None) -> dict:
    """A peer on a case: with `choice` (held-out split) the post-processing fixed in advance; without
    (tuning split), both, and the better one (mean PQ over the case's classes) as the choice."""
    start = time.perf_counter()
    peer = build_peer(name, [thing for _, thing in case.classes], base)
    try:
        peer.fit(case.painted)
    except ValueError as exc:
        return {"refused": str(exc)}
    fit_seconds = time.perf_counter() - start
    maps = {id(image): peer.class_map(image) for image, _ in case.heldout}
    if choice is not None:
        classes = score(case, lambda image: peer.predict(image, choice, maps[id(image)]))
        return {"classes": classes, "postprocessing": choice, "seconds": fit_seconds}
    both = {p: score(case, lambda image, p=p: peer.predict(image, p, maps[id(image)])) for p in POSTPROCESSING}
    best = max(POSTPROCESSING, key=lambda p: np.mean([c["pq"] for c in both[p]]))  # ties: components
    return {"classes": both[best], "postprocessing": best, "both": both, "seconds": fit_seconds}


def peer_choices(split: str, path: Path = CHOICE_FILE) -> dict:
    """The post-processing each peer uses per case on the held-out split (chosen on the tuning split)."""
    if split == "tuning":
        return {}
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python benchmarks/learn_quality.py --split tuning` first (it "
                         "chooses each peer's post-processing on the tuning images)")
    return json.loads(path.read_text())


def cell(r: dict | None, k: int, thing: bool = True) -> str:
    """PQ (SQ) TP/FP/FN of a thing class; PQ (pixel IoU) of a stuff class (one segment per image)."""
    if r is None:
        return "n/a"
    if "refused" in r:
        return "refused"
    c = r["classes"][k]
    if not thing and "iou" in c:
        return f"{c['pq']:5.1f} (IoU {c['iou']:4.1f})"
    return f"{c['pq']:5.1f} ({c['sq']:4.1f}) {c['tp']}/{c['fp']}/{c['fn']}"


def best_peer(results: dict, k: int) -> tuple[str | None, float | None]:
    scores = {n: results[n]["classes"][k]["pq"] for n in PEERS if n in results and "classes" in results[n]}
    if not scores:
        return None, None
    name = max(scores, key=scores.get)
    return name, scores[name]


def seed_spread(r: dict | None, k: int) -> tuple[float, float, float, int] | None:
    """(mean, lowest, highest PQ, runs) of class k over a model learner's seeds (`by_seed`; a refused
    run counts as 0 PQ), or None when it ran with one seed."""
    if not r or "by_seed" not in r:
        return None
    pqs = [0.0 if classes is None else classes[k]["pq"] for classes in r["by_seed"]]
    return float(np.mean(pqs)), min(pqs), max(pqs), len(pqs)


def format_table(rows: dict, learners) -> str:
    width = 26
    head = f"{'case':<26}" + "".join(f"{name:>{width}}" for name in learners) + f"{'learn vs best peer':>22}"
    lines = ["PQ (SQ) TP/FP/FN of each new thing class on held-out images; PQ (pixel IoU) of each stuff class", head]
    for case, (classes, results) in rows.items():
        for k, (name, thing) in enumerate(classes):
            label = case if len(classes) == 1 else f"{case}: {name}"
            cells = [cell(results.get(n), k, thing).rjust(width) for n in learners]
            peer, peer_pq = best_peer(results, k)
            learn = results.get("learn")
            verdict = "-"
            if learn and "classes" in learn and peer_pq is not None:
                pq = learn["classes"][k]["pq"]
                verdict = (f"{pq / peer_pq:.2f}x" if peer_pq > 0 else "peer 0")
                if peer_pq > 75:
                    verdict += f", errors {(100 - pq) / max(100 - peer_pq, 1e-9):.2f}"
            lines.append(f"{label:<26}" + "".join(cells) + f"{verdict:>22}")
    lines += _spread_lines(rows, learners)
    lines += ["", "What each learner is given: the peers the painting only; the model learners also the base model's "
              "confident old "
              "classes (painted and up to 4 other open images) as negatives. 'refused': the learner said the painting "
              "cannot be learned from (nothing known as background)."]
    model_learners = [n for n in learners if n in MODEL_LEARNERS]
    lines.append("On unrelated images (no instance of the classes): old-class pixels kept (worst image), share of "
                 "pixels the new classes claim; seconds from Learn to refreshed predictions")
    lines.append(f"{'case':<26}" + "".join(f"{n:>36}" for n in model_learners))
    for case, (_, results) in rows.items():
        cells = []
        for name in model_learners:
            r = results.get(name)
            text = ("n/a" if r is None else "refused" if "refused" in r else
                    f"{r['kept']:5.1f}% ({r['kept_worst']:5.1f}%) {r['claimed']:5.1f}% {r['seconds']:5.1f} s")
            cells.append(text.rjust(36))
        lines.append(f"{case:<26}" + "".join(cells))
    peers = [n for n in learners if n in PEERS]
    if peers:
        lines.append("Peers' post-processing (c = components, w = watershed): " + "; ".join(
            f"{case}: " + ", ".join(f"{n} {results[n]['postprocessing'][0]}" for n in peers
                                    if n in results and "postprocessing" in results[n])
            for case, (_, results) in rows.items()))
    return "\n".join(lines)


def _spread_lines(rows: dict, learners) -> list[str]:
    """The model learners' PQ over their seeds (the table above shows the first seed's run): a retrained
    step can differ a lot from one seed to the next."""
    seeded = [(n, r[n]["by_seed"]) for n in learners if n in MODEL_LEARNERS
              for _, r in rows.values() if "by_seed" in (r.get(n) or {})]
    if not seeded:
        return []
    spread = [n for n in learners if any(name == n for name, _ in seeded)]
    runs = max(len(b) for _, b in seeded)
    lines = ["", f"PQ over {runs} seeds of each model learner: mean (lowest-highest); a refused run counts 0",
             f"{'case':<26}" + "".join(f"{n:>26}" for n in spread) + f"{'mean vs best peer':>22}"]
    for case, (classes, results) in rows.items():
        for k, (name, _) in enumerate(classes):
            label = case if len(classes) == 1 else f"{case}: {name}"
            cells, verdict = [], "-"
            for n in spread:
                m = seed_spread(results.get(n), k)
                cells.append(("n/a" if m is None else f"{m[0]:5.1f} ({m[1]:.1f}-{m[2]:.1f})").rjust(26))
            learn = seed_spread(results.get("learn"), k)
            _, peer_pq = best_peer(results, k)
            if learn is not None and peer_pq is not None:
                verdict = f"{learn[0] / peer_pq:.2f}x" if peer_pq > 0 else "peer 0"
            lines.append(f"{label:<26}" + "".join(cells) + f"{verdict:>22}")
    return lines


def plot(rows: dict, learners, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], {n: [] for n in learners}
    for case, (classes, results) in rows.items():
        for k, (name, _) in enumerate(classes):
            labels.append(case if len(classes) == 1 else f"{case}: {name}")
            for n in learners:
                r = results.get(n)
                values[n].append(r["classes"][k]["pq"] if r and "classes" in r else 0.0)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels)), 4.2))
    width = 0.8 / len(learners)
    for k, name in enumerate(learners):
        ax.bar(np.arange(len(labels)) + (k - (len(learners) - 1) / 2) * width, values[name], width, label=name)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=35, ha="right")
    ax.set_ylabel("PQ of the new class")
    ax.legend(fontsize=8, ncol=3)
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
    p.add_argument("--iterations-scale", type=float, default=1.0, help="scale the model learners' iterations")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="LearnConfig fields for 'learn' (tuning experiments), e.g. dense_crop=0 iterations=150")
    p.add_argument("--set-adaptive", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="LearnConfig fields for 'adaptive' (tuning experiments), e.g. adaptive_queries=50")
    p.add_argument("--set-published", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="LearnConfig fields for 'published' (tuning experiments)")
    p.add_argument("--seeds", type=int, default=1,
                   help="train each model learner this many times, with seeds seed..seed+N-1 (LearnConfig.seed), "
                        "and report each class's PQ over them (the main table shows the first)")
    p.add_argument("--out", type=Path, default=None, help="default: runs/learn_quality[-tuning]")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    out = args.out or Path("runs/learn_quality" + ("-tuning" if args.split == "tuning" else ""))
    torch.set_num_threads(args.threads)
    choices = peer_choices(args.split) if any(n in PEERS for n in args.learners) else {}
    learn_config = _with_settings(LearnConfig(), args.set)
    configs = {"learn": learn_config, "upper": learn_config,
               "published": _with_settings(LearnConfig.prompts(), args.set_published),
               "adaptive": _with_settings(LearnConfig.adaptive(), args.set_adaptive)}
    configs = {k: replace(c, iterations=max(1, int(c.iterations * args.iterations_scale))) for k, c in configs.items()}
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
            if learner in PEERS:
                choice = choices.get(case.name, {}).get(learner) if args.split == "heldout" else None
                if not any(thing for _, thing in case.classes):
                    choice = "components"  # stuff only: one segment per class either way
                if args.split == "heldout" and choice is None:
                    raise SystemExit(f"no post-processing chosen for {learner} on {case.name!r} in {CHOICE_FILE}: "
                                     "run the tuning split first")
                results[learner] = run_peer(case, learner, base, choice)
            else:
                config = configs[learner]
                runs = [run_model_learner(case, learner, base_path, before, replace(config, seed=config.seed + s))
                        for s in range(args.seeds)]
                results[learner] = runs[0]
                if args.seeds > 1:
                    results[learner] = runs[0] | {"by_seed": [r.get("classes") for r in runs],
                                                  "seeds": [config.seed + s for s in range(args.seeds)]}
            r = results[learner]
            print(f"{case.name:<18} {learner:<18} " + ("refused: " + r["refused"] if "refused" in r else
                  " | ".join(cell(r, k, thing) for k, (_, thing) in enumerate(case.classes)) + f" {r['seconds']:5.1f} s"
                  + (f", kept {r['kept']:.1f}% (worst {r['kept_worst']:.1f}%), claimed {r['claimed']:.1f}%"
                     if "kept" in r else "")), flush=True)
        rows[case.name] = (case.classes, results)
        records[case.name] = {"classes": case.classes, "painting": case.painting, "note": case.note,
                              "heldout_images": len(case.heldout), "unrelated_images": len(case.unrelated),
                              "results": results}
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows, args.learners)
    settings = {"split": args.split, "threads": args.threads, "iterations_scale": args.iterations_scale,
                "seeds": args.seeds,
                **{name: _config_json(configs[name]) for name in ("learn", "published", "adaptive")},
                "seconds": time.perf_counter() - start}
    atomic_write_json(out / "results.json", {"settings": settings, "cases": records}, sort_keys=False)
    atomic_write_text(out / "results.txt", table + "\n")
    plot(rows, args.learners, out / "learn_quality.png")
    if args.split == "tuning" and any(n in PEERS for n in args.learners):
        chosen = json.loads(CHOICE_FILE.read_text()) if CHOICE_FILE.is_file() else {}
        for case, (_, results) in rows.items():
            chosen.setdefault(case, {}).update({n: r["postprocessing"] for n, r in results.items()
                                                if n in PEERS and "postprocessing" in r})
        atomic_write_json(CHOICE_FILE, chosen)
        print(f"wrote the peers' post-processing choice to {CHOICE_FILE}")
    print()
    print(table)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.txt'}, {out / 'learn_quality.png'} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


def _with_settings(config: LearnConfig, settings: list[str]) -> LearnConfig:
    changes = {}
    for item in settings:
        key, _, value = item.partition("=")
        if key not in LearnConfig.__dataclass_fields__:
            raise SystemExit(f"--set: LearnConfig has no field {key!r}")
        current = getattr(config, key)
        kinds = [t for t in typing.get_args(LearnConfig.__dataclass_fields__[key].type) if t is not type(None)]
        optional = len(kinds) < len(typing.get_args(LearnConfig.__dataclass_fields__[key].type))
        if value.lower() == "none":
            if not optional:
                raise SystemExit(f"--set: {key} cannot be None")
            changes[key] = None
        elif current is None:  # an optional field left unset: its other type reads the value
            changes[key] = kinds[0](value)
        elif isinstance(current, tuple):
            changes[key] = tuple(v for v in value.split(",") if v)
        elif isinstance(current, bool):
            changes[key] = value.lower() in ("1", "true", "yes")
        else:
            changes[key] = type(current)(value)
    return replace(config, **changes)


def _config_json(config: LearnConfig) -> dict:
    return {k: (v.__dict__ if hasattr(v, "__dataclass_fields__") else v) for k, v in config.__dict__.items()}


if __name__ == "__main__":
    raise SystemExit(main())
