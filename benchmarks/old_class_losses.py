"""Where a continual-benchmark run lost its old classes: per-class PQ before and after the steps, and
where each old class's ground-truth pixels went.

    python benchmarks/old_class_losses.py runs/bench-order-random-s1        # a finished bench run folder

Reads the run's results.json (its class order), its base model (`base/`) and its ECLIPSE model
(`eclipse/`), predicts the scenes validation split with both, and with the ECLIPSE model merged so that
old groups keep their own no-object verdict (`EclipseModel.old_groups_keep_no_object`), and writes
old_class_losses.json and old_class_losses.txt into the run folder: old / new PQ of the three, and for
each base class its PQ (TP/FP/FN) under each and the three classes (or "unpredicted") that hold most of
its ground-truth pixels under ECLIPSE, with their shares under the base model beside them. Only the
default scenes scenario (the class-order runs).
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eclipse_napari.cli.bench_setup import (  # noqa: E402
    SCENES_SIZE, SCENES_TRAIN, SCENES_VAL, ensure_scene_data, open_datasets)
from model.data.labelled import labelled_images  # noqa: E402
from model.data.scenarios import DEFAULT_SCENE_SCENARIO, eval_groups, get_scenario  # noqa: E402
from model.evaluation.metrics import PanopticQuality  # noqa: E402
from model.io.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from model.io.model_files import load_model  # noqa: E402

UNPREDICTED = 0


def semantic_of(ids: np.ndarray, segments: list[dict]) -> np.ndarray:
    """Each pixel's class (0 where no segment, or a segment not in the list)."""
    lut = np.zeros(int(ids.max()) + 1, np.int64)
    for s in segments:
        if 0 <= s["id"] < len(lut):
            lut[s["id"]] = s["category_id"]
    return lut[ids]


def score(model, images, things: dict[int, bool], groups: dict) -> tuple[dict, np.ndarray, dict]:
    """(per-class PQ, pixel confusion [ground-truth class, predicted class]; 0 = void / unpredicted, PQ of
    the class groups)."""
    pq = PanopticQuality(things)
    n = max(things) + 1
    confusion = np.zeros((n, n), np.int64)
    for k, item in enumerate(images):
        with torch.no_grad():
            result = model.predict(item.image, output_size=tuple(item.gt_ids.shape))
        pred = result.panoptic_seg.numpy()
        segments = [{"id": s.id, "category_id": s.category_id} for s in result.segments]
        pq.update(item.gt_ids, item.gt_segments, pred, segments, where=f"image {k}")
        gt = semantic_of(item.gt_ids, [s for s in item.gt_segments if not s.get("iscrowd")])
        np.add.at(confusion, (gt.ravel(), semantic_of(pred, segments).ravel()), 1)
    return pq.compute(), confusion, {g: s.pq for g, s in pq.summary(groups).items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished `python -m eclipse_napari.bench` output folder")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = json.loads((args.run / "results.json").read_text())
    scenario = get_scenario(DEFAULT_SCENE_SCENARIO)
    if not str(results["scenario"]).startswith(scenario.name):
        print(f"error: {args.run} is a {results['scenario']} run; this script reads {scenario.name} runs",
              file=sys.stderr)
        return 1
    scenario = replace(scenario, name=results["scenario"], class_order=tuple(results["class_order"]))
    root = ensure_scene_data(None, 0, print, SCENES_TRAIN, SCENES_VAL, size=SCENES_SIZE)
    _, val_set = open_datasets(scenario, root, results.get("settings", {}).get("eval_split", "val"))
    images = list(labelled_images(val_set, scenario))
    known = {scenario.learning_id(c["id"]): c for c in val_set.categories if c["id"] in scenario.class_order}
    things = {i: bool(c["isthing"]) for i, c in known.items()}
    names = {i: c["name"] for i, c in known.items()} | {UNPREDICTED: "unpredicted"}
    scores, groups = {}, eval_groups(scenario)
    for method in ("base", "eclipse", "eclipse_own_no_object"):
        model = load_model(args.run / method.split("_")[0], "cpu")
        model.old_groups_keep_no_object = method == "eclipse_own_no_object"
        scores[method] = score(model, images, things, groups)
        print(f"{method}: predicted {len(images)} images", flush=True)
    (base_pq, base_px, _), (step_pq, step_px, _), (own_pq, _, _) = (scores[m] for m in scores)
    old = [i for i in sorted(known) if i <= scenario.num_base]
    rows = []
    for c in old:
        share = step_px[c] / max(step_px[c].sum(), 1)
        share_base = base_px[c] / max(base_px[c].sum(), 1)
        went = [k for k in np.argsort(-share) if k != c and share[k] > 0][:3]
        rows.append({
            "class": names[c], "thing": things[c],
            "base": {"pq": base_pq[c].pq, "tp": base_pq[c].tp, "fp": base_pq[c].fp, "fn": base_pq[c].fn},
            "eclipse": {"pq": step_pq[c].pq, "tp": step_pq[c].tp, "fp": step_pq[c].fp, "fn": step_pq[c].fn},
            "eclipse_own_no_object": {"pq": own_pq[c].pq, "tp": own_pq[c].tp, "fp": own_pq[c].fp, "fn": own_pq[c].fn},
            "pixels_to": [{"class": names[int(k)], "new": int(k) > scenario.num_base, "eclipse": float(share[k]),
                           "base": float(share_base[k])} for k in went],
            "pixels_to_new_classes": float(share[scenario.num_base + 1:].sum()),
        })
    summary = {m: {g: scores[m][2].get(g) for g in ("old", "new")} for m in scores}
    data = {"run": str(args.run), "scenario": scenario.name, "images": len(images), "pq": summary,
            "old_classes": rows}
    labels = {"base": "base model", "eclipse": "ECLIPSE",
              "eclipse_own_no_object": "ECLIPSE, old groups' own no-object"}
    lines = [f"{scenario.name}: old classes under the base model and after ECLIPSE's step(s), {len(images)} "
             "validation images"]
    for m, label in labels.items():
        new = summary[m]["new"]
        new = "-" if new is None else f"{100 * new:.1f}"
        lines.append(f"  {label}: PQ old {100 * summary[m]['old']:.1f}, new {new}")
    lines.append(f"{'class':12} {'kind':5} {'base PQ (TP/FP/FN)':>22} {'ECLIPSE PQ (TP/FP/FN)':>24} "
                 f"{'own no-obj PQ (TP/FP/FN)':>25}  to new classes  where its pixels went under ECLIPSE (base)")
    for r in sorted(rows, key=lambda r: r["eclipse"]["pq"] - r["base"]["pq"]):
        b, e, o = r["base"], r["eclipse"], r["eclipse_own_no_object"]
        went = ", ".join(f"{w['class']}{'*' if w['new'] else ''} {100 * w['eclipse']:.0f}% ({100 * w['base']:.0f}%)"
                         for w in r["pixels_to"])
        lines.append(f"{r['class']:12} {'thing' if r['thing'] else 'stuff':5} "
                     f"{100 * b['pq']:6.1f} ({b['tp']:>3}/{b['fp']:>3}/{b['fn']:>3})     "
                     f"{100 * e['pq']:6.1f} ({e['tp']:>3}/{e['fp']:>3}/{e['fn']:>3})      "
                     f"{100 * o['pq']:6.1f} ({o['tp']:>3}/{o['fp']:>3}/{o['fn']:>3})       "
                     f"{100 * r['pixels_to_new_classes']:5.1f}%  {went}")
    for kind, flag in (("things", True), ("stuff", False)):
        sel = [r for r in rows if r["thing"] == flag]
        if sel:
            lines.append(f"old {kind}: mean PQ {100 * np.mean([r['base']['pq'] for r in sel]):.1f} (base), "
                         f"{100 * np.mean([r['eclipse']['pq'] for r in sel]):.1f} (ECLIPSE), "
                         f"{100 * np.mean([r['eclipse_own_no_object']['pq'] for r in sel]):.1f} (own no-object)")
    lines.append("* a class learned in a later step")
    table = "\n".join(lines)
    atomic_write_json(args.run / "old_class_losses.json", data, sort_keys=False)
    atomic_write_text(args.run / "old_class_losses.txt", table + "\n")
    print(table)
    print(f"\nwrote {args.run / 'old_class_losses.json'} and {args.run / 'old_class_losses.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
