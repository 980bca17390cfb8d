"""The continual benchmark, headless: from a base model, learn every step of a scenario with each method
and evaluate PQ old / new / all after every step.

Methods (same iterations and batch per step):
- "eclipse": a prompt group per step, everything else frozen (the method).
- "finetune": the base class head grows, everything trains on the current step's labels (forgets).
- "joint": the upper bound: the base class head grows by all new classes at once and everything trains
  on every class's labels, for the budget of all steps together.
"""

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .data.augment import AugmentConfig
from .data.coco_panoptic import PanopticDataset
from .data.labelled import LabelledImage, labelled_images
from .data.scenarios import Scenario, eval_groups, select_step_images, step_keep_ids
from .data.training_set import StepTrainingSet
from .evaluation.deltas import select_deltas
from .evaluation.evaluate import evaluate, evaluate_semantic
from .io.atomic import atomic_write_json
from .io.model_files import load_model, save_model
from .network.eclipse import EclipseModel
from .training.baselines import extend_base_classes
from .training.criterion import LossConfig
from .training.engine import TrainConfig, train
from .training.progress import Progress

METHODS = ("eclipse", "finetune", "joint")


@dataclass(frozen=True)
class BenchSettings:
    iterations_per_step: int
    batch_size: int
    step_lr: float  # ECLIPSE's prompt-tuning learning rate
    finetune_lr: float  # fine-tuning and joint training (whole network)
    prompts_per_step: int
    delta: str | float = "auto"  # "auto" (chosen on held-out step images), "paper" (the scenario's), or a number
    heldout_images: int = 24  # per step, taken out of training for the automatic delta
    augment: AugmentConfig | None = None
    cache_mb: int = 2048
    seed: int = 0
    device: str = "cpu"
    max_eval_images: int | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    eval_split: str = "val"  # recorded: "val" reports, "tune" (generated scenes) chooses settings


@dataclass
class StepRecord:
    step: int
    seconds: float
    trainable_parameters: int
    iterations: int
    final_loss: float
    pq: dict  # panoptic scenarios: group -> {"pq", "sq", "rq", "n"} ({} for semantic ones)
    deltas: list[float] = field(default_factory=list)
    delta_table: list[dict] = field(default_factory=list)
    peak_memory_mib: float = 0.0
    miou: dict = field(default_factory=dict)  # semantic scenarios: group -> {"miou", "n"}


def class_specs(dataset: PanopticDataset, scenario: Scenario, step: int):
    by_id = {c["id"]: c for c in dataset.categories}
    cats = [by_id[i] for i in scenario.step_classes(step)]
    return [c["name"].strip() for c in cats], [bool(c["isthing"]) for c in cats], [tuple(c["color"]) for c in cats]


def _peak_memory_mib(device: str) -> float:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _summary(result: dict) -> dict:
    if "miou" in result:
        return {k: {"miou": v.miou, "n": v.n} for k, v in result["miou"].items()}
    return {k: {"pq": v.pq, "sq": v.sq, "rq": v.rq, "n": v.n} for k, v in result["pq"].items()}


def _record(step, seconds, result, scores: dict, task: str, **extra) -> StepRecord:
    """A step's record, its scores under the scenario's metric (PQ, or mIoU for semantic scenarios)."""
    semantic = task == "semantic"
    return StepRecord(step, seconds, result.trainable_parameters, result.iterations,
                      result.losses[-1] if result.losses else math.nan, {} if semantic else scores,
                      miou=scores if semantic else {}, **extra)


class ContinualBenchmark:
    def __init__(
        self,
        scenario: Scenario,
        train_set: PanopticDataset,
        val_set: PanopticDataset,
        settings: BenchSettings,
        log: Callable[[str], None] = print,
        progress: Callable[[Progress], None] | None = None,
        out_dir: Path | None = None,
        resume: bool = False,
        semantic_folder: Path | None = None,
    ):
        """out_dir: where every finished step is saved (model + record) with the resumable training state;
        resume: skip steps already finished there and continue an interrupted one; semantic_folder: the
        evaluation images' semantic annotations (ADE20K's annotations/validation), the mIoU ground truth
        of semantic scenarios."""
        self.scenario, self.train_set, self.val_set, self.settings = scenario, train_set, val_set, settings
        self.log, self.progress = log, progress
        self.out_dir, self.resume = (Path(out_dir) if out_dir is not None else None), resume
        annotations = {i: train_set.annotation(i) for i in train_set.image_ids}
        self.step_images = {t: select_step_images(annotations, scenario, t) for t in range(scenario.num_steps + 1)}
        ids = list(val_set.image_ids)
        if settings.max_eval_images is not None:
            ids = ids[: settings.max_eval_images]
        self.val = list(labelled_images(val_set.subset(ids), scenario, semantic_folder=semantic_folder))
        things = {c["id"]: bool(c["isthing"]) for c in val_set.categories}
        self.categories = {scenario.learning_id(d): things[d] for d in scenario.class_order}

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, model: EclipseModel, step: int) -> dict:
        """Group -> scores after `step`: PQ for panoptic scenarios; mIoU of the semantic inference for
        semantic ones (the paper's tables); images resized to the scenario's test size first."""
        groups, size = eval_groups(self.scenario, step), self.scenario.test_size
        with torch.no_grad():
            if self.scenario.task == "semantic":
                return _summary(evaluate_semantic(model, self.val, groups, max(self.categories), size))
            return _summary(evaluate(model, self.val, groups, categories=self.categories, test_size=size))

    # ----------------------------------------------------------------- checkpoints after each step
    def _step_dir(self, method: str, step: int) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "steps" / f"{method}_step{step:03d}"

    def _resumed(self, method: str, step: int):
        d = self._step_dir(method, step)
        if not self.resume or d is None or not (d / "record.json").exists():
            return None
        self.log(f"{method} step {step}: resumed from {d}")
        record = StepRecord(**json.loads((d / "record.json").read_text()))
        return load_model(d, self.settings.device), record

    def _finish(self, method: str, model: EclipseModel, record: StepRecord) -> StepRecord:
        d = self._step_dir(method, record.step)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if d is not None and rank == 0:
            save_model(model, d)
            atomic_write_json(d / "record.json", asdict(record), sort_keys=False)
        return record

    # ----------------------------------------------------------------- one step of one method
    def _train(self, model, image_ids, keep, iterations, lr, method: str, step: int):
        s = self.settings
        data = StepTrainingSet(self.train_set.subset(image_ids), self.scenario, s.augment, keep)
        config = TrainConfig(
            iterations=iterations, batch_size=s.batch_size, lr=lr, seed=s.seed, cache_mb=s.cache_mb,
            loss=s.loss,
        )
        state = None if self.out_dir is None else self.out_dir / "steps" / f"{method}_step{step:03d}_train_state.pt"
        if state is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
        return train(model, data, config, device=s.device, callback=self.progress, state_path=state,
                     resume=self.resume)

    def _heldout(self, step: int) -> tuple[list, list[LabelledImage]]:
        images = list(self.step_images[step])
        rng = np.random.default_rng([self.settings.seed, step])
        n = min(self.settings.heldout_images, len(images) // 5)
        chosen = set(rng.choice(len(images), size=n, replace=False).tolist()) if n else set()
        train_ids = [img for i, img in enumerate(images) if i not in chosen]
        heldout_ids = [img for i, img in enumerate(images) if i in chosen]
        keep = step_keep_ids(self.scenario, step)
        heldout = list(labelled_images(self.train_set.subset(heldout_ids), self.scenario, keep)) if heldout_ids else []
        return train_ids, heldout

    def run_eclipse(self, base: EclipseModel) -> tuple[EclipseModel, list[StepRecord]]:
        s, scenario = self.settings, self.scenario
        model = copy.deepcopy(base)
        records = []
        for t in range(1, scenario.num_steps + 1):
            if (resumed := self._resumed("eclipse", t)) is not None:
                model, record = resumed
                records.append(record)
                continue
            names, things, colors = class_specs(self.train_set, scenario, t)
            train_ids, heldout = self._heldout(t) if s.delta == "auto" else (self.step_images[t], [])
            reference = [model.predict(h.image) for h in heldout]
            model.add_step(names, things, s.prompts_per_step, colors)
            start = time.perf_counter()
            result = self._train(model, train_ids, step_keep_ids(scenario, t), s.iterations_per_step, s.step_lr,
                                 "eclipse", t)
            table = []
            if s.delta == "auto" and heldout:
                deltas, table = select_deltas(model, heldout, reference)
                model.set_deltas(deltas)
            elif s.delta == "paper":
                model.set_deltas(list(scenario.deltas[: t + 1]))
            elif s.delta not in ("auto",):
                model.set_deltas(model.deltas[:-1] + [float(s.delta)])
            seconds = time.perf_counter() - start
            scores = self.evaluate(model, t)
            records.append(self._finish("eclipse", model, _record(
                t, seconds, result, scores, scenario.task, deltas=model.deltas, delta_table=table,
                peak_memory_mib=_peak_memory_mib(s.device))))
            self.log(f"eclipse step {t}: {seconds:.0f} s, {self._all(scores)}, deltas {model.deltas}")
        return model, records

    def run_finetune(self, base: EclipseModel) -> tuple[EclipseModel, list[StepRecord]]:
        s, scenario = self.settings, self.scenario
        model = copy.deepcopy(base)
        records = []
        for t in range(1, scenario.num_steps + 1):
            if (resumed := self._resumed("finetune", t)) is not None:
                model, record = resumed
                records.append(record)
                continue
            names, things, colors = class_specs(self.train_set, scenario, t)
            extend_base_classes(model, names, things, colors)
            start = time.perf_counter()
            result = self._train(model, self.step_images[t], step_keep_ids(scenario, t), s.iterations_per_step,
                                 s.finetune_lr, "finetune", t)
            seconds = time.perf_counter() - start
            scores = self.evaluate(model, t)
            records.append(self._finish("finetune", model, _record(
                t, seconds, result, scores, scenario.task, peak_memory_mib=_peak_memory_mib(s.device))))
            self.log(f"finetune step {t}: {seconds:.0f} s, {self._all(scores)}")
        return model, records

    def run_joint(self, base: EclipseModel) -> tuple[EclipseModel, list[StepRecord]]:
        s, scenario = self.settings, self.scenario
        last = scenario.num_steps
        if (resumed := self._resumed("joint", last)) is not None:
            model, record = resumed
            return model, [record]
        model = copy.deepcopy(base)
        for t in range(1, scenario.num_steps + 1):
            names, things, colors = class_specs(self.train_set, scenario, t)
            extend_base_classes(model, names, things, colors)
        images = sorted(set().union(*(self.step_images[t] for t in range(scenario.num_steps + 1))), key=str)
        start = time.perf_counter()
        iterations = s.iterations_per_step * scenario.num_steps
        result = self._train(model, images, None, iterations, s.finetune_lr, "joint", last)
        seconds = time.perf_counter() - start
        scores = self.evaluate(model, last)
        self.log(f"joint: {seconds:.0f} s, {self._all(scores)}")
        record = _record(last, seconds, result, scores, scenario.task, peak_memory_mib=_peak_memory_mib(s.device))
        return model, [self._finish("joint", model, record)]

    def _all(self, scores: dict) -> str:
        metric = self.scenario.metric
        return f"{'mIoU' if metric == 'miou' else 'PQ'} all {scores['all'][metric] * 100:.1f}"

    def run(self, base: EclipseModel, methods=METHODS) -> dict:
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        results = {"base": {"step": 0, self.scenario.metric: self.evaluate(base, 0)}, "methods": {}, "models": {}}
        runners = {"eclipse": self.run_eclipse, "finetune": self.run_finetune, "joint": self.run_joint}
        for method in methods:
            model, records = runners[method](base)
            results["methods"][method] = records
            results["models"][method] = model
        return results
