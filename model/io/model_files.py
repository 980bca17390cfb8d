"""Base-model and step files.

A model on disk is a folder: `base.safetensors` (backbone, pixel decoder, decoder, base queries and
heads, config and base classes) plus one small `step_NNN.safetensors` per continual step, holding only
that step's tensors and metadata: classes, delta vector, and the fingerprints of the base (and of the
previous step) it was trained on, so a step is never attached to a model it does not belong to.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..network.adaptive_queries import AdaptiveGroup
from ..network.build import build_model
from ..network.classes import ClassSpec
from ..network.config import ModelConfig
from ..network.dense_head import build_dense_head
from ..network.dense_segments import InstanceRule
from ..network.eclipse import EclipseModel
from ..network.query_groups import DenseGroup, QueryGroup
from .atomic import atomic_write_json
from .tensor_files import CheckpointError, load_tensor_file, save_tensor_file, tensor_fingerprint

BASE_KIND = "eclipse-base"
STEP_KIND = "eclipse-step"
BASE_FILE = "base.safetensors"
MANIFEST_FILE = "model.json"
_GROUPS = "decoder.groups."


STEP_FILE_PATTERN = re.compile(r"step_\d{3}\.safetensors")


def step_file_name(step: int) -> str:
    return f"step_{step:03d}.safetensors"


def base_tensors(model: EclipseModel) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in model.state_dict().items() if not k.startswith(_GROUPS) or k.startswith(_GROUPS + "0.")
    }


def step_tensors(model: EclipseModel, step: int) -> dict[str, torch.Tensor]:
    if not 1 <= step <= model.num_steps:
        raise ValueError(f"the model has steps 1..{model.num_steps}, not {step}")
    return dict(model.decoder.groups[step].state_dict())


def _without_delta(tensors: dict, delta_key: str) -> dict:
    # Deltas are re-tuned when steps are added; they are not part of what a step was trained on.
    return {k: v for k, v in tensors.items() if k != delta_key}


def base_fingerprint(model: EclipseModel) -> str:
    return tensor_fingerprint(_without_delta(base_tensors(model), _GROUPS + "0.delta"))


def step_fingerprint(model: EclipseModel, step: int) -> str:
    return tensor_fingerprint(_without_delta(step_tensors(model, step), "delta"))


def save_base(model: EclipseModel, path: str | os.PathLike) -> None:
    metadata = {
        "config": model.config.to_json(),
        "classes": [c.to_json() for c in model.groups[0].classes],
        "fingerprint": base_fingerprint(model),
    }
    save_tensor_file(path, base_tensors(model), BASE_KIND, metadata)


def load_base(path: str | os.PathLike, device: str | torch.device = "cpu") -> EclipseModel:
    tensors, meta = load_tensor_file(path, kind=BASE_KIND)
    try:
        config = ModelConfig.from_json(meta["config"])
        classes = [ClassSpec.from_json(c) for c in meta["classes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the base model metadata is incomplete or invalid ({exc})") from exc
    # The file holds every backbone weight, so the backbone starts random and is then overwritten.
    model = build_model(
        config, [c.name for c in classes], [c.is_thing for c in classes], [c.color for c in classes], "random"
    )
    load_exact(model, tensors, path, "base model")
    return model.to(device)


def save_step(model: EclipseModel, step: int, path: str | os.PathLike) -> None:
    group = model.groups[step] if 1 <= step <= model.num_steps else None
    if group is None:
        raise ValueError(f"the model has steps 1..{model.num_steps}, not {step}")
    if isinstance(group, DenseGroup):
        layout = {"dense_head": {**group.head.layout(), "rule": group.rule.to_json()}}
    elif isinstance(group, AdaptiveGroup):
        layout = {"adaptive_queries": group.layout()}
    else:
        layout = {"position_sets": group.positions.shape[0], "owns_no_object_head": group.no_object_head is not None}
    if group.num_queries:
        layout["lays_over_previous"] = bool(group.lays_over_previous)
        if group.rule is not None:
            layout["claim_rule"] = group.rule.to_json()
    metadata = {
        "step": step,
        "classes": [c.to_json() for c in group.classes],
        "num_prompts": group.num_queries,
        **layout,
        # The deltas in effect right after this step (later steps may re-tune earlier deltas).
        "deltas": model.deltas if step == model.num_steps else list(model.groups[step + 1].previous_deltas),
        # So is whether old groups keep their own no-object verdict (absent in older files: they do not).
        "old_groups_keep_no_object": (model.old_groups_keep_no_object if step == model.num_steps
                                      else model.groups[step + 1].previous_keep_no_object),
        "base_fingerprint": base_fingerprint(model),
        "parent_fingerprint": step_fingerprint(model, step - 1) if step > 1 else None,
        "fingerprint": step_fingerprint(model, step),
    }
    save_tensor_file(path, step_tensors(model, step), STEP_KIND, metadata)


def load_step(model: EclipseModel, path: str | os.PathLike) -> QueryGroup | DenseGroup | AdaptiveGroup:
    """Appends the step stored in `path` to `model`; refuses a step of another base or out of order."""
    tensors, meta = load_tensor_file(path, kind=STEP_KIND)
    try:
        step, deltas = int(meta["step"]), [float(d) for d in meta["deltas"]]
        keep_no_object = meta.get("old_groups_keep_no_object", False)
        if not isinstance(keep_no_object, bool):
            raise ValueError(f"old_groups_keep_no_object is {keep_no_object!r}, not true or false")
        over = meta.get("lays_over_previous", False)  # absent in step files written before it: as published
        if not isinstance(over, bool):
            raise ValueError(f"lays_over_previous is {over!r}, not true or false")
        claim_rule = InstanceRule.from_json(meta["claim_rule"]) if "claim_rule" in meta else None
        classes = [ClassSpec.from_json(c) for c in meta["classes"]]
        base_fp, parent_fp = meta["base_fingerprint"], meta["parent_fingerprint"]
        if "dense_head" in meta:  # a dense step (no queries)
            layout, rule = dict(meta["dense_head"]), InstanceRule.from_json(meta["dense_head"]["rule"])
        elif "adaptive_queries" in meta:
            adaptive = dict(meta["adaptive_queries"])
            queries, scorer_hidden = int(adaptive["queries"]), int(adaptive["scorer_hidden"])
            pixel_inputs, pixel_hidden = list(adaptive.get("pixel_inputs", [])), int(adaptive.get("pixel_hidden", 64))
            min_area = float(adaptive.get("min_area", 0.0))  # absent in step files written before it
            if not min_area >= 0.0:
                raise ValueError(f"min_area is {min_area}, not a number of pixels")
        else:
            position_sets, owns_no_object = int(meta["position_sets"]), bool(meta["owns_no_object_head"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the step metadata is incomplete or invalid ({exc})") from exc
    if base_fp != base_fingerprint(model):
        raise CheckpointError(
            f"{path}: this step was trained on a different base model (fingerprint {base_fp[:12]}…, "
            f"this model's base is {base_fingerprint(model)[:12]}…); it cannot be attached"
        )
    if step != model.num_steps + 1:
        raise CheckpointError(
            f"{path}: this is step {step}, but the model has {model.num_steps} step(s); "
            f"load steps in order (next expected: {model.num_steps + 1})"
        )
    if step > 1 and parent_fp != step_fingerprint(model, step - 1):
        raise CheckpointError(f"{path}: step {step} was trained after a different step {step - 1} than this model's")
    clash = sorted({c.name for c in classes} & {c.name for c in model.classes})
    if clash:
        raise CheckpointError(f"{path}: the model already has classes named {clash}")
    if len(deltas) != step + 1:
        raise CheckpointError(f"{path}: expected {step + 1} deltas, found {len(deltas)}")
    if "dense_head" in meta:
        try:
            head = build_dense_head(layout, len(classes), model.dense_input_channels, model.config.hidden_dim)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: the dense step's head does not fit this model ({exc})") from exc
        group = DenseGroup(classes, head, rule)
    elif "adaptive_queries" in meta:
        try:
            channels = {k: model.dense_input_channels[k] for k in pixel_inputs}
            group = AdaptiveGroup(queries, model.config.hidden_dim, classes, model.decoder.num_layers, True,
                                  scorer_hidden=scorer_hidden, pixel_channels=channels, pixel_hidden=pixel_hidden)
            group.min_area = min_area
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: the adaptive step's layout is invalid ({exc})") from exc
    else:
        content = tensors.get("content")
        if content is None or content.ndim != 2:
            raise CheckpointError(f"{path}: the step file has no valid 'content' tensor")
        group = QueryGroup(content.shape[0], model.config.hidden_dim, classes, position_sets, owns_no_object)
    load_exact(group, tensors, path, "step")
    if group.num_queries:
        group.lays_over_previous, group.rule = over, claim_rule
    stage = getattr(getattr(group, "head", None), "pixel_stage", None)
    if stage is not None:
        try:
            stage.forest.check(stage.in_channels)
        except ValueError as exc:
            raise CheckpointError(f"{path}: the dense step's pixel forest is damaged ({exc})") from exc
    group.previous_deltas = model.deltas
    group.previous_keep_no_object = model.old_groups_keep_no_object
    model.decoder.groups.append(group.to(model.pixel_mean.device))
    model.set_deltas(deltas)
    model.old_groups_keep_no_object = keep_no_object
    model.freeze_for_training()
    return group


def load_exact(module: torch.nn.Module, tensors: dict, path, what: str) -> None:
    """load_state_dict that names missing, unexpected and wrongly shaped tensors (CheckpointError)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {keys[:5]}{' …' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CheckpointError(f"{path}: the {what} tensors do not match the model ({details})")
    module.load_state_dict(tensors, strict=True)


def save_model(model: EclipseModel, folder: str | os.PathLike) -> Path:
    """Writes base + every step + a manifest into `folder`, as one change: everything is written into a
    temporary sibling folder first, which then becomes `folder` (or, where `folder` already holds files,
    its files move in with the manifest last, since the manifest commits the model) and step files
    the manifest no longer lists are removed. A crash leaves the old model or the new one, never a mix;
    other files in `folder` are kept."""
    folder = Path(folder)
    parent = folder.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    files = [BASE_FILE] + [step_file_name(t) for t in range(1, model.num_steps + 1)]
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
    try:
        save_base(model, tmp / BASE_FILE)
        for t, name in enumerate(files[1:], start=1):
            save_step(model, t, tmp / name)
        atomic_write_json(tmp / MANIFEST_FILE, {"base": BASE_FILE, "steps": files[1:]})
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        if not folder.exists():
            os.rename(tmp, folder)
            return folder
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: exists and is not a folder")
        for name in files + [MANIFEST_FILE]:
            os.replace(tmp / name, folder / name)
        for stale in folder.iterdir():
            if STEP_FILE_PATTERN.fullmatch(stale.name) and stale.name not in files:
                stale.unlink()
        return folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> EclipseModel:
    import json

    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{folder}: not a model folder (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(manifest_path.read_text())
        base, steps = manifest["base"], list(manifest["steps"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_path}: invalid manifest ({exc})") from exc
    model = load_base(folder / base, device)
    for name in steps:
        load_step(model, folder / name)
    return model
