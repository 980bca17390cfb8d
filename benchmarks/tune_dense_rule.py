"""Chooses a dense step's post-processing settings on the tuning split: each case's step is learned
once, then every candidate rule is applied to the same trained head (post-processing needs no
retraining) and scored on the case's held-out tuning images, with its effect on unrelated images.

    python benchmarks/tune_dense_rule.py                                     # foreign ceiling and snap
    python benchmarks/tune_dense_rule.py --cases coins crowded --ceilings 0.5 0.3 --snaps 0.5 0

Prints, per candidate, the mean PQ of the new classes over the cases, the mean of old-class pixels
kept on unrelated images and the worst case's worst image, and writes tune_dense_rule.json into --out.
Only the tuning split: what is chosen here is then reported on the held-out split by learn_quality.py.
"""

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learn_cases import CASE_NAMES, build_cases  # noqa: E402
from learn_quality import class_instances, score, unrelated_effect  # noqa: E402

from eclipse_napari.resources import shipped_base_path  # noqa: E402
from model.interactive.config import LearnConfig, NewClass  # noqa: E402
from model.interactive.learn import learn_classes  # noqa: E402
from model.io.atomic import atomic_write_json  # noqa: E402
from model.io.model_files import load_model  # noqa: E402

DEFAULT_CASES = ("scenes horse", "scenes heart", "scenes arrow", "scenes sand", "crowded", "crowded partial",
                 "coins", "coins few", "ihc", "ihc few", "retina", "retina partial")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help=f"of {list(CASE_NAMES)}")
    p.add_argument("--ceilings", nargs="+", type=float, default=[0.5, 0.35, 0.2])
    p.add_argument("--snaps", nargs="+", type=float, default=[0.5])
    p.add_argument("--cores", nargs="+", type=float, default=[None], help="core thresholds (default: as learned)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/tune_dense_rule"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    base_path = shipped_base_path()
    base = load_model(base_path).eval()
    cases = build_cases("tuning", args.cases)
    candidates = list(itertools.product(args.ceilings, args.snaps, args.cores))
    table = {c: [] for c in candidates}
    for case in cases:
        before = [base.predict(image).semantic.numpy() for image in case.unrelated]
        model = load_model(base_path).eval()
        classes = [NewClass(n, t, list(ex)) for (n, t), ex in zip(case.classes, case.painted)]
        try:
            result = learn_classes(model, classes, LearnConfig(), context=case.context)
        except ValueError as exc:
            print(f"{case.name}: refused ({exc})")
            continue
        group, learned = model.groups[-1], model.groups[-1].rule
        for ceiling, snap, core in candidates:
            group.rule = replace(learned, foreign_ceiling=ceiling, snap_iou=snap,
                                 core=learned.core if core is None else core)

            def predict(image):
                r = model.predict(image)
                return [class_instances(r, c) for c in result.class_ids]

            scores = score(case, predict)
            pq, sq = [c["pq"] for c in scores], [c["sq"] for c in scores]
            effect = unrelated_effect(before, model, case.unrelated, result.class_ids)
            table[(ceiling, snap, core)].append({"case": case.name, "pq": pq, "sq": sq, **effect})
            print(f"{case.name:<18} ceiling {ceiling:4.2f} snap {snap:3.1f} core {core or learned.core:4.2f}: PQ "
                  f"{' / '.join(f'{v:5.1f}' for v in pq)} (SQ {' / '.join(f'{v:5.1f}' for v in sq)}), kept "
                  f"{effect['kept']:5.1f}% (worst {effect['kept_worst']:5.1f}%)", flush=True)
        group.rule = learned
    print()
    rows = []
    for (ceiling, snap, core), items in table.items():
        if not items:
            continue
        pqs = [v for item in items for v in item["pq"]]
        sqs = [v for item in items for v in item["sq"]]
        row = {"foreign_ceiling": ceiling, "snap_iou": snap, "core": core, "mean_pq": float(np.mean(pqs)),
               "mean_sq": float(np.mean(sqs)),
               "mean_kept": float(np.mean([i["kept"] for i in items])),
               "worst_kept": float(min(i["kept_worst"] for i in items)), "cases": items}
        rows.append(row)
        print(f"ceiling {ceiling:4.2f} snap {snap:3.1f} core {core}: mean PQ {row['mean_pq']:5.1f} "
              f"(SQ {row['mean_sq']:5.1f}), mean kept {row['mean_kept']:5.1f}%, worst image {row['worst_kept']:5.1f}%")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "tune_dense_rule.json", {"seconds": time.perf_counter() - start, "rows": rows})
    print(f"wrote {args.out / 'tune_dense_rule.json'} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
