"""Data, base model and process-group setup for `python -m eclipse_napari.bench`."""

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..resources import shipped_base_path
from .progress import progress_bar

SCENES_VERSION = "scenes-v1"  # bump when the generator changes its output
SCENES_TRAIN, SCENES_VAL, SCENES_SIZE, SCENES_SEED = 1500, 200, 256, 0


def default_output_dir(scenario) -> Path:
    return Path("runs") / f"bench-{scenario.name}"


def setup_distributed(device: str) -> tuple[int, int]:
    """Joins the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        if str(device).startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def ensure_scene_data(root: Path | None, rank: int, log, num_train: int = SCENES_TRAIN, num_val: int = SCENES_VAL,
                      size: int = SCENES_SIZE) -> Path:
    """Generates the scenes once (deterministic) into `root` or a cache folder, and returns it."""
    from model.data.scenes import write_scenes

    if root is None:
        cache = Path(os.environ.get("ECLIPSE_NAPARI_DATA", Path.home() / ".cache" / "eclipse-napari"))
        suffix = "" if (num_train, num_val) == (SCENES_TRAIN, SCENES_VAL) else f"-{num_train}-{num_val}"
        root = cache / f"{SCENES_VERSION}-{size}-seed{SCENES_SEED}{suffix}"
    workers = max(1, min(4, os.cpu_count() or 1))
    if rank == 0 and not (root / "scenes_val.json").exists():
        log(f"generating {num_train} + {num_val} + {num_val} (tuning) scenes into {root} (once)")
        write_scenes(root, num_train, num_val, seed=SCENES_SEED, size=size, workers=workers, num_tune=num_val)
    elif rank == 0 and not (root / "scenes_tune.json").exists():  # made before the tuning split existed
        log(f"generating {num_val} tuning scenes into {root} (once)")
        write_scenes(root, 0, 0, seed=SCENES_SEED, size=size, workers=workers, num_tune=num_val, splits=("tune",))
    _barrier()
    return root


EVAL_SPLITS = ("val", "tune")


def dataset_paths(dataset: str, root: Path, split: str) -> tuple[Path, Path, Path]:
    """(json, image folder, panoptic PNG folder) of a split in the layout our converters write."""
    if split == "tune" and dataset != "scenes":
        raise ValueError(f"{dataset} has no tuning split here (only the generated scenes do): evaluate on val")
    if dataset == "scenes":
        return root / f"scenes_{split}.json", root / f"images_{split}", root / f"scenes_{split}"
    if dataset == "ade20k":
        folder = {"train": "training", "val": "validation"}[split]
        return root / f"ade20k_panoptic_{split}.json", root / "images" / folder, root / f"ade20k_panoptic_{split}"
    if dataset == "coco":
        return (root / "annotations" / f"panoptic_{split}2017.json", root / f"{split}2017",
                root / "annotations" / f"panoptic_{split}2017")
    raise ValueError(f"unknown dataset {dataset!r}")


def semantic_folder(scenario, root: Path | None, log=print) -> Path | None:
    """ADE20K semantic scenarios score mIoU against the release's own semantic annotations
    (ROOT/annotations/validation, beside the converted panoptic files), as published; without them, from
    the panoptic segments (thing pixels without an instance are void there), said once."""
    if scenario.task != "semantic" or scenario.dataset != "ade20k" or root is None:
        return None
    folder = Path(root) / "annotations" / "validation"
    if folder.is_dir():
        return folder
    log(f"note: {folder} not found; mIoU ground truth comes from the panoptic segments")
    return None


def open_datasets(scenario, root: Path, eval_split: str = "val"):
    """(training set, evaluation set); `eval_split` "tune" evaluates on the scenes' tuning split."""
    from model.data.coco_panoptic import PanopticDataset

    paths = [dataset_paths(scenario.dataset, Path(root), split) for split in ("train", eval_split)]
    for p in (p for split in paths for p in split):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: {scenario.dataset} data is expected under {root}")
    train, evaluation = (PanopticDataset(*split) for split in paths)
    return train, evaluation


def load_base_model(path: Path | None, scenario, train_set):
    """The base model (default: the shipped one); its classes must be the scenario's base classes."""
    from model.benchmark import class_specs
    from model.io.model_files import load_model

    if path is None:
        if scenario.dataset != "scenes":
            raise ValueError(f"{scenario.name}: give the step-0 model with --base, or train it with --train-base")
        path = shipped_base_path()
        if not (path / "model.json").exists():
            raise ValueError(f"the shipped base model is missing from {path}; train one with --train-base")
    model = load_model(path)
    names, _, _ = class_specs(train_set, scenario, 0)
    if model.num_steps or [c.name for c in model.classes] != names:
        raise ValueError(
            f"{path}: its classes ({len(model.classes)}, {model.num_steps} steps) are not the base classes of "
            f"{scenario.name} ({len(names)})"
        )
    return model


def train_base_model(scenario, train_set, out: Path, *, device: str, backbone: str | None = None,
                     iterations: int | None = None, batch_size: int | None = None, seed: int = 0,
                     resume: bool = False, log=print, rank: int = 0):
    """Step 0: the full model on the scenario's base classes, saved to `out` (defaults: the scenario's
    backbone, iterations and batch size); `resume` continues from the training state saved there."""
    from model.benchmark import class_specs
    from model.data.scenarios import select_step_images, step_keep_ids
    from model.data.training_set import StepTrainingSet
    from model.io.model_files import save_model
    from model.network.build import build_model
    from model.network.config import config_for_backbone
    from model.training.engine import TrainConfig, train

    backbone = backbone or scenario.backbone
    config = config_for_backbone(backbone, num_queries=scenario.num_queries)
    weights = "random" if backbone.startswith("resnet") else None  # nothing ships ResNet weights
    names, things, colors = class_specs(train_set, scenario, 0)
    torch.manual_seed(seed)
    model = build_model(config, names, things, colors, backbone_weights=weights).to(device)
    annotations = {i: train_set.annotation(i) for i in train_set.image_ids}
    images = select_step_images(annotations, scenario, 0)
    data = StepTrainingSet(train_set.subset(images), scenario, scenario.augment, step_keep_ids(scenario, 0))
    iterations = iterations or scenario.iterations_base
    log(f"training the base model: {backbone}, {len(names)} classes, {len(images)} images, {iterations} iterations")
    train_config = TrainConfig(iterations=iterations, batch_size=batch_size or scenario.batch_size,
                               lr=scenario.base_lr, seed=seed, augment_variants=0, checkpoint_every=200,
                               loss=scenario.loss)
    out.mkdir(parents=True, exist_ok=True)
    train(model, data, train_config, device=device, callback=progress_bar(rank),
          state_path=out / "train_state.pt", resume=resume)
    if rank == 0:
        save_model(model, out)
    _barrier()
    return model
