"""Reproduce the continual panoptic benchmark headless.

    python -m eclipse_napari.bench                       # generated scenes, shipped base model, CPU
    python -m eclipse_napari.bench --scenario ade-panoptic-100-5 --data-root DATA --base MODEL_DIR --device cuda
    torchrun --nproc_per_node=4 -m eclipse_napari.bench --scenario ...        # several GPUs / processes
    python -m eclipse_napari.bench --eval-only MODEL_DIR                      # evaluate a saved model

Prints a paper-style table (PQ old / new / all after the last step per method, cost per step), and
writes results.json, results.txt, pq_per_step.png (miou_per_step.png for semantic scenarios) and the
trained models into --out.
"""

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

from .bench_report import format_summary, format_table, machine_info, plot_pq, results_json, summarize
from .bench_setup import (
    EVAL_SPLITS,
    SCENES_SIZE,
    SCENES_TRAIN,
    SCENES_VAL,
    default_output_dir,
    ensure_scene_data,
    load_base_model,
    open_datasets,
    semantic_folder,
    setup_distributed,
    train_base_model,
)
from .progress import progress_bar

METHODS = ("eclipse", "finetune", "joint")  # as model.benchmark.METHODS (not imported: it loads torch)
CLASS_ORDERS = ("given", "random", "descending")  # as model.data.scenarios.CLASS_ORDERS


def delta_choice(text: str):
    """--delta: "auto", "paper" or a number, checked before anything runs."""
    value = str(text).strip().lower()
    if value in ("auto", "paper"):
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'paper' or a number, got {text!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def _given(value, default):
    """An option's value when given (0 included, where the option allows it), else the default."""
    return default if value is None else value


def build_parser() -> argparse.ArgumentParser:
    from model.data.scenarios import DEFAULT_SCENE_SCENARIO

    p = argparse.ArgumentParser(prog="python -m eclipse_napari.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default=DEFAULT_SCENE_SCENARIO, help="scenario name (--list shows them)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--data-root", type=Path, default=None,
                   help="dataset folder (ADE20K/COCO in COCO-panoptic format; generated scenes are made here "
                        "when missing; default for scenes: a cache folder)")
    p.add_argument("--scenes", type=positive_int, nargs=2, default=None, metavar=("TRAIN", "VAL"),
                   help="number of generated scenes to make when they are missing (default 1500 200; the "
                        "tuning split gets as many as VAL)")
    p.add_argument("--scenes-size", type=positive_int, default=None, help="side of generated scenes (default 256)")
    p.add_argument("--eval-split", choices=EVAL_SPLITS, default="val",
                   help="evaluate on the validation split (default; what tables report) or, for the generated "
                        "scenes, on the tuning split (where settings are chosen)")
    p.add_argument("--base", type=Path, default=None, help="base model folder (default: the shipped one for scenes)")
    p.add_argument("--train-base", action="store_true", help="train the base model (step 0) first")
    p.add_argument("--base-only", action="store_true", help="with --train-base: stop after the base model")
    p.add_argument("--base-iterations", type=positive_int, default=None,
                   help="step-0 iterations (default: the scenario's)")
    p.add_argument("--backbone", default=None, help="backbone for --train-base (default: the scenario's)")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="learn only the first N continual steps (a quick check of a long scenario)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--class-order", choices=CLASS_ORDERS, default="given",
                   help="learn the classes in the published order, a random one (from --seed; with --seeds, one "
                        "per seed) or by descending frequency in the training set (SimCIS's robustness test). "
                        "Another order has other base classes: it needs --train-base")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="iterations per step (default: the scenario's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the scenario's")
    p.add_argument("--step-lr", type=positive_float, default=None,
                   help="ECLIPSE prompt-tuning learning rate (default: the scenario's)")
    p.add_argument("--delta", type=delta_choice, default="auto",
                   help="'auto' (chosen on held-out images), 'paper', or a number")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    p.add_argument("--max-eval-images", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="run the benchmark once per seed (into OUT/seed-N) and write the mean and spread over "
                        "them (summary.json, summary.txt): one run is not a result where tiny float differences "
                        "can flip a choice such as the automatic delta")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out: finished steps are reloaded, an unfinished one "
                        "continues from its last saved training state")
    p.add_argument("--eval-only", type=Path, default=None, metavar="MODEL_DIR", help="only evaluate this model")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/bench-<scenario>)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from model.data.scenarios import get_scenario, scenario_table

    if args.list:
        print(scenario_table())
        return 0
    try:
        scenario = get_scenario(args.scenario)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = setup_distributed(device)
    log = print if rank == 0 else (lambda *a, **k: None)
    out = args.out or default_output_dir(scenario)
    if args.max_steps is not None:
        scenario = scenario.first_steps(args.max_steps)
    if args.seeds:
        if args.eval_only is not None or (args.train_base and args.base_only):
            print("error: --seeds repeats a benchmark run; it does not combine with --eval-only or --base-only",
                  file=sys.stderr)
            return 1
        runs = []
        for seed in args.seeds:
            log(f"=== seed {seed} ===")
            code, data = _run(args, scenario, device, rank, world, log, seed, out / f"seed-{seed}")
            if code:
                return code
            runs.append(data)
        if rank == 0:
            _write_summary(runs, out, scenario)
        return 0
    return _run(args, scenario, device, rank, world, log, args.seed, out)[0]


def _run(args, scenario, device, rank, world, log, seed: int, out: Path) -> tuple[int, dict | None]:
    """One benchmark run with `seed` into `out`: (exit code, the results JSON)."""
    from model.benchmark import BenchSettings, ContinualBenchmark
    from model.io.model_files import save_model
    from model.io.tensor_files import CheckpointError

    try:
        root = args.data_root
        if scenario.dataset == "scenes":
            counts = args.scenes or (SCENES_TRAIN, SCENES_VAL)
            root = ensure_scene_data(root, rank, log, *counts, size=args.scenes_size or SCENES_SIZE)
        elif root is None:
            raise ValueError(f"{scenario.name} needs --data-root (the {scenario.dataset} dataset in COCO-panoptic format)")
        train_set, val_set = open_datasets(scenario, root, args.eval_split)
        if args.class_order != "given":
            from model.data.scenarios import reorder_classes

            if not args.train_base:
                raise ValueError(f"--class-order {args.class_order} learns other base classes: add --train-base "
                                 "(a base model trained on them)")
            scenario = reorder_classes(scenario, args.class_order, {i: train_set.annotation(i)
                                                                    for i in train_set.image_ids}, seed)
            log(f"class order ({args.class_order}): {list(scenario.class_order)}")
        if args.eval_only is not None:
            return _eval_only(args, scenario, train_set, val_set, device, log), None
        # Everything not given on the command line is the scenario's (augmentation and losses always are).
        settings = BenchSettings(
            iterations_per_step=_given(args.iterations, scenario.iterations_per_step),
            batch_size=_given(args.batch_size, scenario.batch_size),
            step_lr=_given(args.step_lr, scenario.step_lr),
            finetune_lr=scenario.base_lr,
            prompts_per_step=scenario.prompts_per_step,
            delta=args.delta,
            augment=scenario.augment,
            seed=seed,
            device=device,
            max_eval_images=args.max_eval_images,
            loss=scenario.loss,
            eval_split=args.eval_split,
        )
        if args.train_base:
            base = train_base_model(scenario, train_set, out / "base", device=device, backbone=args.backbone,
                                    iterations=args.base_iterations, batch_size=args.batch_size, seed=seed,
                                    resume=args.resume, log=log, rank=rank)
            if args.base_only:
                log(f"base model saved to {out / 'base'}")
                return 0, None
        else:
            base = load_base_model(args.base, scenario, train_set)
        base = base.to(device)
        bench = ContinualBenchmark(scenario, train_set, val_set, settings, log=log, progress=progress_bar(rank),
                                   out_dir=out, resume=args.resume, semantic_folder=semantic_folder(scenario, root, log))
        start = time.perf_counter()
        results = bench.run(base, args.methods)
        results["seconds"] = time.perf_counter() - start
        if "eclipse" in results["models"] and args.delta != "paper":
            fixed = copy.deepcopy(results["models"]["eclipse"])
            fixed.set_deltas(list(scenario.deltas[: fixed.num_steps + 1]))
            results["eclipse_paper_deltas"] = bench.evaluate(fixed, scenario.num_steps)
        if "eclipse" in results["models"]:
            own = copy.deepcopy(results["models"]["eclipse"])
            own.old_groups_keep_no_object = True
            results["eclipse_own_no_object"] = bench.evaluate(own, scenario.num_steps)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1, None
    data = results_json(scenario, settings, results, world)
    data["machine"] = machine_info(device)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for method, model in results["models"].items():
            save_model(model, out / method)
        from model.io.atomic import atomic_write_json, atomic_write_text

        atomic_write_json(out / "results.json", data, sort_keys=False)
        table = format_table(data)
        atomic_write_text(out / "results.txt", table + "\n")
        plot = out / f"{scenario.metric}_per_step.png"
        plot_pq(data, plot)
        print()
        print(table)
        print(f"\nwrote {out / 'results.json'}, {out / 'results.txt'}, {plot} and the models")
    return 0, data


def _write_summary(runs: list[dict], out: Path, scenario) -> None:
    from model.io.atomic import atomic_write_json, atomic_write_text

    summary = summarize(runs)
    atomic_write_json(out / "summary.json", summary, sort_keys=False)
    table = format_summary(summary)
    atomic_write_text(out / "summary.txt", table + "\n")
    print()
    print(table)
    print(f"\nwrote {out / 'summary.json'} and {out / 'summary.txt'} (each seed's results in {out}/seed-N)")


def _eval_only(args, scenario, train_set, val_set, device, log) -> int:
    from model.benchmark import BenchSettings, ContinualBenchmark
    from model.io.model_files import load_model

    model = load_model(args.eval_only, device)
    settings = BenchSettings(0, 1, 0.0, 0.0, 1, device=device, max_eval_images=args.max_eval_images,
                             eval_split=args.eval_split)
    bench = ContinualBenchmark(scenario, train_set, val_set, settings, log=log,
                               semantic_folder=semantic_folder(scenario, args.data_root, log))
    pq = bench.evaluate(model, min(model.num_steps, scenario.num_steps))
    log(json.dumps({"model": str(args.eval_only), "steps": model.num_steps, scenario.metric: pq,
                    "split": args.eval_split}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
