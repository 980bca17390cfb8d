"""Where Learn's seconds go: predictions before the step, frozen features, iterations, delta choice, report.

    python benchmarks/learn_cost.py                        # paper R50 configuration at 512 px, and the default
    python benchmarks/learn_cost.py --models default --iterations 100

One Learn of the published prompt step (`LearnConfig.prompts()`, the learner whose delta is chosen on
the examples) and one of Learn's default (a dense step), each on 3 painted images, 2 threads, for
  - "paper": the structure of the published ECLIPSE / Mask2Former R50 model (`paper_config`, 100
    classes) on 512x512 images. Its weights here are random (no checkpoint can be downloaded on this
    machine): the time of every phase depends on the structure and the image size, not on the weight
    values, except the merges, whose cost grows with the segments found.
  - "default": the shipped base model on 256x256 scenes.
Phases are timed from inside `learn_classes` (the functions it calls are wrapped here, nothing else
changes): "before" = the predictions before the step (each image's frozen features kept), "delta" = the
delta choice, "report" = the rest after training (decoding the kept features again, the reports on the
painted and the other open images). Writes results.json and results.txt into --out.
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import model.interactive.learn as learn_module  # noqa: E402
from eclipse_napari.resources import shipped_base_path  # noqa: E402
from model.data.scenes import SCENE_CLASSES, generate_scene  # noqa: E402
from model.interactive.config import Example, LearnConfig  # noqa: E402
from model.io.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from model.io.model_files import load_model  # noqa: E402
from model.network.build import build_model  # noqa: E402
from model.network.config import paper_config  # noqa: E402

CLASS = "horse"


def painted(size: int, count: int = 3) -> list[Example]:
    """Scenes (seed 201, the tuning seed) showing the class, its instances painted."""
    class_id = next(i for i, c in enumerate(SCENE_CLASSES, start=1) if c.name == CLASS)
    out, index = [], 0
    while len(out) < count:
        image, ids, segments = generate_scene(index, seed=201, size=size)
        mine = [s for s in segments if s["category_id"] == class_id and not s["iscrowd"]]
        if mine:
            instances = np.zeros(ids.shape, np.int32)
            for k, s in enumerate(mine, start=1):
                instances[ids == s["id"]] = k
            out.append(Example(image, instances, complete=True))
        index += 1
    return out


def base_model(name: str):
    if name == "default":
        return load_model(shipped_base_path()).eval()
    torch.manual_seed(0)
    names = [f"class {k}" for k in range(100)]
    return build_model(paper_config(), names, [k % 3 != 0 for k in range(100)], backbone_weights="random").eval()


class Timer:
    """Wraps functions of the learn module to add up their seconds."""

    def __init__(self, names):
        self.seconds = {n: 0.0 for n in names}
        self.started: dict[str, float] = {}
        self.real = {n: getattr(learn_module, n) for n in names}
        for n in names:
            setattr(learn_module, n, self._wrap(n))

    def _wrap(self, name):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self.started.setdefault(name, start)
            try:
                return self.real[name](*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed

    def restore(self):
        for n, f in self.real.items():
            setattr(learn_module, n, f)


def one_learn(model_name: str, learner: str, iterations: int, context: int) -> dict:
    size = 512 if model_name == "paper" else 256
    examples = painted(size)
    others = [generate_scene(500 + k, seed=201, size=size)[0] for k in range(context)]  # other open images
    model = base_model(model_name)
    config = LearnConfig.for_learner(learner)
    config = replace(config, iterations=iterations)
    ticks = []
    timer = Timer(["select_deltas", "train"])
    start = time.perf_counter()
    try:
        learn_module.learn_class(model, CLASS, True, examples, config, context=others,
                                 callback=lambda p: ticks.append(time.perf_counter()))
    finally:
        timer.restore()
    end = time.perf_counter()
    train = timer.seconds["train"]
    before = timer.started["train"] - start  # the predictions before the step (features kept)
    first = ticks[0] - timer.started["train"]  # frozen features of every image and variant, then one step
    per_iteration = (ticks[-1] - ticks[0]) / max(len(ticks) - 1, 1)
    after = end - timer.started["train"] - train  # decoding the kept features again, delta choice, reports
    return {"model": model_name, "learner": learner, "size": size, "iterations": iterations,
            "context_images": context, "trainable": model.num_trainable_parameters(), "total": end - start,
            "before_step": before, "train": train, "first_iteration": first, "per_iteration": per_iteration,
            "delta_choice": timer.seconds["select_deltas"], "report": after - timer.seconds["select_deltas"],
            "after_training": after}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["paper", "default"], choices=["paper", "default"])
    p.add_argument("--learners", nargs="+", default=["prompts", "dense"], choices=["prompts", "dense"])
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=2, help="other open (unpainted) images, reported apart")
    p.add_argument("--out", type=Path, default=Path("runs/learn_cost"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for m in args.models:
        for learner in args.learners:
            rows.append(one_learn(m, learner, args.iterations, args.context))
            r = rows[-1]
            print(f"{m:<8} {learner:<8} total {r['total']:6.1f} s, before {r['before_step']:5.1f} s, "
                  f"train {r['train']:6.1f} s "
                  f"(first iteration {r['first_iteration']:5.1f} s, then {r['per_iteration']:.2f} s/it), "
                  f"delta choice {r['delta_choice']:5.1f} s, report {r['report']:5.1f} s", flush=True)
    head = (f"{'model':<8}{'learner':<9}{'image':>7}{'its':>5}{'Learn s':>9}{'before s':>10}{'train s':>9}"
            f"{'1st it s':>10}{'s/it':>7}{'delta s':>9}{'report s':>10}")
    lines = [f"One Learn on 3 painted images and {args.context} other open images, {args.threads} threads "
             f"({time.strftime('%Y-%m-%d')})", head]
    for r in rows:
        lines.append(f"{r['model']:<8}{r['learner']:<9}{r['size']:>7}{r['iterations']:>5}{r['total']:>9.1f}"
                     f"{r['before_step']:>10.1f}{r['train']:>9.1f}{r['first_iteration']:>10.1f}"
                     f"{r['per_iteration']:>7.2f}{r['delta_choice']:>9.1f}{r['report']:>10.1f}")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", {"settings": {k: str(v) for k, v in vars(args).items()},
                                                  "runs": rows})
    atomic_write_text(args.out / "results.txt", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
