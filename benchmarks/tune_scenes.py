"""Chooses the scenes' prompt-tuning learning rate on the tuning split (never on the validation split
the benchmark's table reports).

    python benchmarks/tune_scenes.py                      # lr 2e-3, 3e-3, 5e-3 on scenes-16-8, 2 threads
    python benchmarks/tune_scenes.py --lrs 1e-3 3e-3 --threads 4

Runs `python -m eclipse_napari.bench --methods eclipse --eval-split tune --step-lr LR` once per rate (the
shipped base, the scenario's other settings), and writes results.json and results.txt into --out with
PQ old / new / all on the tuning scenes and the rate chosen: the best mean of (old PQ as a share of the
base model's, capped at 1) and (new PQ), i.e. new classes learned while old ones keep at least what
the others keep. Then rerun the table on validation with the chosen rate set in the scenario.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eclipse_napari.cli.bench import main as bench  # noqa: E402
from model.io.atomic import atomic_write_json, atomic_write_text  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="scenes-16-8")
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 3e-3, 5e-3])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/tune_scenes"))
    args = p.parse_args(argv)
    rows = []
    for lr in args.lrs:
        out = args.out / f"lr{lr:g}"
        start = time.perf_counter()
        code = bench(["--scenario", args.scenario, "--methods", "eclipse", "--eval-split", "tune",
                      "--step-lr", str(lr), "--threads", str(args.threads), "--out", str(out)])
        if code != 0:
            return code
        data = json.loads((out / "results.json").read_text())
        base = data["base"]["pq"]["old"]["pq"]
        last = data["methods"]["eclipse"][-1]["pq"]
        rows.append({"lr": lr, "base_old": base, "old": last["old"]["pq"], "new": last["new"]["pq"],
                     "all": last["all"]["pq"], "deltas": data["methods"]["eclipse"][-1]["deltas"],
                     "seconds": time.perf_counter() - start})
    for r in rows:
        r["score"] = (min(r["old"] / r["base_old"], 1.0) + r["new"]) / 2 if r["base_old"] else r["new"]
    best = max(rows, key=lambda r: r["score"])
    lines = [f"{args.scenario}, ECLIPSE prompt-tuning lr on the tuning split ({time.strftime('%Y-%m-%d')})",
             f"{'lr':>8}{'PQ old':>8}{'(base)':>8}{'PQ new':>8}{'PQ all':>8}  deltas"]
    for r in rows:
        lines.append(f"{r['lr']:>8g}{r['old'] * 100:>8.1f}{r['base_old'] * 100:>8.1f}{r['new'] * 100:>8.1f}"
                     f"{r['all'] * 100:>8.1f}  {[round(d, 2) for d in r['deltas']]}" + ("  <- chosen" if r is best else ""))
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", {"scenario": args.scenario, "split": "tune", "runs": rows,
                                                  "chosen_lr": best["lr"]})
    atomic_write_text(args.out / "results.txt", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
