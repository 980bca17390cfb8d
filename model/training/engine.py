"""The training engine: one loop for step 0 (the full model) and step t (prompt tuning).

A readable loop in the spirit of torchvision's detection references: AdamW, poly schedule restarted
per step, gradient clipping, AMP on CUDA, seeds, resumable state, a progress callback, a cancel flag
checked every iteration, and a clear stop on a non-finite loss (the model keeps its last good state:
nothing is stepped once the loss or the gradients are not finite).

Batches are a pure function of (seed, rank, iteration), so a resumed run continues exactly where an
interrupted one stopped. Under torch.distributed (torchrun) every rank draws its own batches and the
gradients of the trainable tensors are averaged across ranks.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from ..io.atomic import atomic_write
from ..io.tensor_files import CheckpointError, load_torch_weights_only
from ..network.adaptive_queries import AdaptiveGroup
from ..network.decoder import DecoderMemory
from ..network.dense_head import DenseInputs
from ..network.eclipse import EclipseModel
from .criterion import (LossConfig, build_criterion, decode_learned_group, pad_targets, predictions_from_features,
                        predictions_from_output)
from .dense import dense_loss, dense_targets, dense_window
from .feature_cache import FeatureCache, features_nbytes
from .progress import Progress, RunState


# Weight of a dense head's stride-4 loss beside its full-resolution one: the context part learns on its
# own too, which the full-resolution path then refines.
DENSE_COARSE_WEIGHT = 0.5


class TrainingSet(Protocol):
    """What the engine trains on: `sample(index, augmentation_seed)` gives (uint8 [3,H,W], target).
    An optional attribute `weights` (one per image, summing to 1) makes some images drawn more often."""

    def __len__(self) -> int: ...

    def sample(self, index: int, augmentation_seed: int) -> tuple[torch.Tensor, dict]: ...


@dataclass(frozen=True)
class TrainConfig:
    iterations: int
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_lr_factor: float = 0.1  # step 0 only (Mask2Former's backbone multiplier)
    clip_norm: float = 0.01
    poly_power: float = 0.9
    seed: int = 0
    amp: bool = True  # used on CUDA only
    augment_variants: int = 8  # augmentations per image; (image, variant) pairs are what the cache keys on
    cache_mb: int = 1024  # frozen-feature cache budget at steps t >= 1 (0 disables it)
    checkpoint_every: int = 0  # iterations between resumable states (0: only at the end)
    # Dense steps: each sample trains on a random window of this side (a multiple of 32; 0 = whole): the
    # head's full-resolution path costs in proportion to the pixels.
    dense_crop: int = 0
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class TrainResult:
    state: RunState
    iterations: int
    losses: list[float]
    seconds: float
    trainable_parameters: int
    cache_hits: int = 0
    cache_misses: int = 0
    message: str = ""


class NonFiniteLossError(RuntimeError):
    pass


def _no_decay(name: str, param: torch.Tensor) -> bool:
    # No weight decay on norms, biases-as-norm-shifts and embeddings (queries, prompts, level embeds).
    embedding = any(k in name for k in ("content", "positions", "level_embed"))
    return embedding or param.ndim == 1


def build_optimizer(model: EclipseModel, config: TrainConfig) -> torch.optim.Optimizer:
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = config.lr * (config.backbone_lr_factor if name.startswith("backbone.") else 1.0)
        wd = 0.0 if _no_decay(name, p) else config.weight_decay
        groups.setdefault((lr, wd), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _batch_plan(config: TrainConfig, num_images: int, rank: int, iteration: int, weights=None) -> list[tuple[int, int]]:
    rng = np.random.default_rng([config.seed, rank, iteration])
    if weights is None:
        indices = rng.integers(0, num_images, size=config.batch_size)
    else:
        indices = rng.choice(num_images, size=config.batch_size, p=weights)
    variants = rng.integers(0, max(config.augment_variants, 1), size=config.batch_size)
    return [(int(i), int(v)) for i, v in zip(indices, variants)]


def _augmentation_seed(config: TrainConfig, index: int, variant: int, iteration: int) -> int:
    if config.augment_variants > 0:
        return (config.seed * 1_000_003 + index * 1009 + variant) % 2**31
    return (config.seed * 1_000_003 + iteration * 7919 + index) % 2**31


class Trainer:
    """Trains the group the model is currently learning (group 0 at step 0, the newest at step t)."""

    def __init__(self, model: EclipseModel, data: TrainingSet, config: TrainConfig, device="cpu"):
        if len(data) == 0:
            raise ValueError("the training set is empty")
        self.model, self.data, self.config = model, data, config
        self.device = torch.device(device)
        self.frozen_features = model.num_steps > 0
        self.dense = model.num_steps > 0 and model.groups[-1].num_queries == 0  # a dense step: pixel losses
        # An adaptive step with a pixel network reads frozen backbone levels besides the decoder's inputs.
        group = model.groups[-1]
        self.pixel_inputs = group.pixels.inputs if isinstance(group, AdaptiveGroup) and group.pixels else ()
        self.cache = FeatureCache(config.cache_mb * 2**20 if self.frozen_features else 0)
        self.keep_projections: bool | None = None  # decided on the first frozen sample
        self.criterion = None if self.dense else build_criterion(model, config.loss)
        self.optimizer = build_optimizer(model, config)
        total = config.iterations
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: max(1 - it / total, 0.0) ** config.poly_power
        )
        # AMP on CUDA, except for a dense step: its small head trains in float32 on float32 features, the
        # numbers it is then used with at inference (what trains is what predicts).
        self.amp = config.amp and self.device.type == "cuda" and not self.dense
        self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.iteration = 0
        self.losses: list[float] = []
        self.seconds_before = 0.0  # training time of the run before a resume

    # ----------------------------------------------------------------- one iteration
    def _frozen_sample(self, index: int, variant: int, iteration: int):
        """(mask features, decoder memory, target, the frozen maps an adaptive step's pixel network reads
        (by name; None: none)) of one (image, augmentation) at step t. All of it is
        frozen (features, the memory's projected keys and values, the augmented target), so with
        augmentation variants it is made once per variant and cached. The projections triple an entry's
        bytes: they are kept only while every (image, variant) of the run fits the cache with them
        (otherwise a larger share of entries fits without them, and a miss costs far more)."""
        def compute():
            img, target = self.data.sample(index, _augmentation_seed(self.config, index, variant, iteration))
            levels = None
            with torch.no_grad(), self._autocast():
                x, _ = self.model.preprocess(img[None].to(self.device))
                if self.pixel_inputs:
                    mask_features, memories, dense = self.model.encode_dense(x)
                    levels = {k: dense.levels[k].float() for k in self.pixel_inputs}
                else:
                    mask_features, memories = self.model.encode(x)
                mask_features, memories = mask_features.float(), [m.float() for m in memories]
                prepared = self.model.decoder.prepare(memories, mask_features, self.keep_projections is not False)
            if self.keep_projections is None:
                pairs = len(self.data) * self.config.augment_variants
                entry = features_nbytes((mask_features, prepared, target, levels))
                # Without a cache an entry serves once: keep what was computed.
                self.keep_projections = not self.cache.budget_bytes or pairs * entry <= self.cache.budget_bytes
                if not self.keep_projections:
                    prepared = prepared.without_projections(memories)
            return mask_features, prepared, _to(target, self.device), levels

        if self.config.augment_variants > 0:
            return self.cache.get((index, variant), compute)
        return compute()

    def _autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp)

    def batch_loss(self, iteration: int) -> dict:
        """The loss dict of iteration `iteration`'s batch ("loss" is the weighted total)."""
        rank, _ = _world()
        plan = _batch_plan(self.config, len(self.data), rank, iteration, getattr(self.data, "weights", None))
        if self.dense:
            return self._dense_batch_loss(plan, iteration)
        generator = torch.Generator(device=self.device).manual_seed(
            (self.config.seed * 7_777_777 + rank * 100_003 + iteration) % 2**63
        )
        deep = self.config.loss.deep_supervision
        if not self.frozen_features:
            samples = [self.data.sample(i, _augmentation_seed(self.config, i, v, iteration)) for i, v in plan]
            x, _ = self.model.preprocess_many([img.to(self.device) for img, _ in samples])
            with self._autocast():
                preds = predictions_from_features(self.model, self.model.encode(x), deep)
            targets = pad_targets([_to(t, self.device) for _, t in samples], tuple(x.shape[-2:]))
            return self.criterion(_float(preds), targets, generator=generator)
        # Step t: frozen samples (cached), decoded in groups of equal size.
        groups: dict[tuple, list] = {}
        for index, variant in plan:
            entry = self._frozen_sample(index, variant, iteration)
            groups.setdefault(tuple(entry[0].shape[-2:]), []).append(entry)
        parts: dict = {"loss": 0.0}
        for items in groups.values():
            mask_features = torch.cat([f for f, _, _, _ in items])
            prepared = DecoderMemory.cat([m for _, m, _, _ in items])
            levels = {k: torch.cat([e[3][k] for e in items]) for k in self.pixel_inputs} or None
            with self._autocast():
                out = decode_learned_group(self.model, (mask_features, None), prepared, levels)
                preds = predictions_from_output(out, mask_features, deep)
            size = (mask_features.shape[-2] * 4, mask_features.shape[-1] * 4)
            targets = pad_targets([t for _, _, t, _ in items], size)
            losses = self.criterion(_float(preds), targets, generator=generator)
            group = self.model.groups[-1]
            if isinstance(group, AdaptiveGroup):  # its scorer learns where the queries start
                pixels = out.pixel_features[0]  # what the decoder computed for the step (None: frozen)
                losses["loss_scorer"] = group.scorer_loss(mask_features if pixels is None else pixels, targets,
                                                          self.model.class_ids(self.model.num_steps))
                losses["loss"] = losses["loss"] + losses["loss_scorer"]
            weight = len(items) / len(plan)
            for k, v in losses.items():
                parts[k] = parts.get(k, 0.0) + v * weight
        return parts

    def _dense_batch_loss(self, plan, iteration: int) -> dict:
        """A dense step's loss: its head on the frozen inputs (features and image) and per-pixel targets,
        both kept per (image, augmentation variant), so a repeated variant costs no augmentation either.
        The loss of the head's stride-4 logits is added with weight `DENSE_COARSE_WEIGHT`."""
        group = self.model.groups[-1]
        class_ids = self.model.class_ids(self.model.num_steps)
        is_thing = [c.is_thing for c in group.classes]
        by_size: dict[tuple, list] = {}
        for k, (index, variant) in enumerate(plan):
            def compute(index=index, variant=variant):
                img, target = self.data.sample(index, _augmentation_seed(self.config, index, variant, iteration))
                with torch.no_grad():
                    x, _ = self.model.preprocess(img[None].to(self.device))
                    inputs = self.model.encode_dense(x)[2]
                return inputs, list(dense_targets(target, class_ids, tuple(x.shape[-2:])))

            entry = self.cache.get((index, variant), compute) if self.config.augment_variants > 0 else compute()
            entry = dense_window(entry, self.config.dense_crop, self.config.seed, iteration, k)
            by_size.setdefault(tuple(entry[1][0].shape), []).append(entry)
        parts: dict = {}
        for items in by_size.values():
            fine, coarse = group.head.forward_both(DenseInputs.cat([f for f, _ in items]))
            labels = torch.stack([t[0] for _, t in items]).to(self.device)
            distance = torch.stack([t[1] for _, t in items]).to(self.device)
            losses = dense_loss(fine, labels, distance, is_thing)
            # Deep supervision of the stride-4 context. Without a full-resolution path (the default) `fine` is
            # `coarse` upsampled and this would be the same loss again: a total weight of
            # 1 + DENSE_COARSE_WEIGHT, which the learning rate and clip norm were tuned with (so it is kept,
            # without computing the loss twice).
            if group.head.refine is None:
                losses["loss"] = losses["loss"] * (1 + DENSE_COARSE_WEIGHT)
            else:
                coarse_losses = dense_loss(coarse, labels, distance, is_thing)
                losses["loss"] = losses["loss"] + DENSE_COARSE_WEIGHT * coarse_losses["loss"]
            for k, v in losses.items():
                parts[k] = parts.get(k, 0.0) + v * (len(items) / len(plan))
        return parts


    def step(self) -> float:
        """One optimisation step; raises NonFiniteLossError without touching the weights."""
        if not self.model.training:  # (walking every module each step costs ~5 ms)
            self.model.train()
        loss = self.batch_loss(self.iteration)["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at iteration {self.iteration}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        _, world = _world()
        if world > 1:
            for p in params:
                dist.all_reduce(p.grad)
                p.grad /= world
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.clip_norm)
        if not torch.isfinite(norm) and not self.scaler.is_enabled():
            raise NonFiniteLossError(f"non-finite gradients at iteration {self.iteration}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        value = float(loss.detach())
        self.losses.append(value)
        return value

    # ----------------------------------------------------------------- resumable state
    def state_dict(self) -> dict:
        trainable = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
        return {
            "iteration": self.iteration,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "trainable": trainable,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "num_steps": self.model.num_steps,
            "seconds": torch.tensor(self.seconds_before, dtype=torch.float64),
        }

    def save_state(self, path) -> None:
        atomic_write(path, lambda tmp: torch.save(self.state_dict(), tmp))

    def load_state(self, path) -> None:
        state = load_torch_weights_only(path)
        if not isinstance(state, dict) or state.get("num_steps") != self.model.num_steps:
            raise CheckpointError(f"{path}: this training state belongs to another step of the model")
        params = dict(self.model.named_parameters())
        trainable = state["trainable"]
        if set(trainable) != {n for n, p in params.items() if p.requires_grad}:
            raise CheckpointError(f"{path}: the trainable tensors do not match this model")
        with torch.no_grad():
            for name, value in trainable.items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = int(state["iteration"])
        self.losses = state["losses"].tolist()
        self.seconds_before = float(state.get("seconds", 0.0))  # states written before it was recorded: 0


def train(
    model: EclipseModel,
    data: TrainingSet,
    config: TrainConfig,
    *,
    device="cpu",
    callback: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Trains the current step for `config.iterations` iterations (fewer if cancelled).

    state_path: where the resumable state is written (every `checkpoint_every` iterations and at the
    end); with resume=True an existing state there is loaded first.
    """
    trainer = Trainer(model, data, config, device)
    if resume and state_path is not None and Path(state_path).exists():
        trainer.load_state(state_path)
    rank, _ = _world()
    step = model.num_steps
    start = time.perf_counter()
    before = trainer.seconds_before

    def elapsed() -> float:
        return before + time.perf_counter() - start

    def report(state: RunState, message: str = "") -> None:
        if callback is not None and rank == 0:
            lr = trainer.scheduler.get_last_lr()[0]
            loss = trainer.losses[-1] if trainer.losses else math.nan
            callback(Progress(step, trainer.iteration, config.iterations, loss, lr, elapsed(), state, message))

    def save_state() -> None:
        trainer.seconds_before = elapsed()
        trainer.save_state(state_path)

    def result(state: RunState, message: str = "") -> TrainResult:
        return TrainResult(
            state, trainer.iteration, list(trainer.losses), time.perf_counter() - start,
            model.num_trainable_parameters(), trainer.cache.hits, trainer.cache.misses, message,
        )

    while trainer.iteration < config.iterations:
        if cancel is not None and cancel():
            report(RunState.CANCELLED)
            return result(RunState.CANCELLED)
        try:
            trainer.step()
        except NonFiniteLossError as exc:
            report(RunState.FAILED, str(exc))
            raise
        if state_path is not None and rank == 0 and config.checkpoint_every:
            if trainer.iteration % config.checkpoint_every == 0:
                save_state()
        report(RunState.RUNNING)
    if state_path is not None and rank == 0:
        save_state()
    report(RunState.DONE)
    return result(RunState.DONE)


def _to(target: dict, device) -> dict:
    return {"labels": target["labels"].to(device), "masks": target["masks"].to(device)}


def _float(preds: list[dict]) -> list[dict]:
    """Predictions in float32 for the losses (even under autocast); non-finite ones stop training
    here, before the matcher sees them."""
    out = [{k: v.float() for k, v in p.items()} for p in preds]
    if not all(torch.isfinite(v).all() for p in out for v in p.values()):
        raise NonFiniteLossError("the model produced non-finite predictions (diverged training?)")
    return out
