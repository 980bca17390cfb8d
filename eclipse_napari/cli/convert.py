"""Command line: convert an official ECLIPSE detectron2 checkpoint into our model folder.

    python -m eclipse_napari.convert MODEL_FINAL.pth --out FOLDER [--classes ade20k|coco] \\
        [--base-checkpoint STEP0.pth] [--deltas 0.4,0.5,...] [--force]

The folder gets base.safetensors, one step_NNN.safetensors per continual step and model.json.
The official checkpoint is read with torch.load(weights_only=True): files holding arbitrary Python
objects are refused, never executed.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from model.data.categories import class_list
from model.io.model_files import BASE_FILE, MANIFEST_FILE, save_model, step_file_name
from model.io.official_checkpoint import PR, convert_official, load_official_state_dict
from model.io.tensor_files import CheckpointError
from model.network.eclipse import EclipseModel

_NO_OBJECT = PR + "class_embed.cls.0."
_PROMPTS = PR + "prompt_feat."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eclipse_napari.convert",
        description=__doc__.split("\n")[0],
        epilog="A step-k checkpoint holds only the newest version of the no-object MLP (it is retrained at "
        "every step); pass the step-0 checkpoint as --base-checkpoint to keep the base's own copy, so that "
        "removing the steps gives back the exact step-0 model.",
    )
    p.add_argument("checkpoint", help="official model_final.pth (step 0 or step k)")
    p.add_argument("--out", required=True, help="output model folder (must not exist or be empty, unless --force)")
    p.add_argument(
        "--classes",
        choices=("ade20k", "coco"),
        default="ade20k",
        help="class names in learning order: ADE20K identity order, or COCO in the 83-x order (default: ade20k)",
    )
    p.add_argument(
        "--base-checkpoint",
        default=None,
        help="the step-0 model_final.pth the step-k checkpoint was trained from (gives the base its own "
        "no-object MLP; its frozen weights must equal the step checkpoint's)",
    )
    p.add_argument(
        "--deltas",
        default=None,
        help="comma-separated logit-manipulation deltas, one per group (base, step 1, ...); "
        "default 0.4 for the base and 0.5 per step (the published ADE20K values)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into an existing non-empty folder: our model files are replaced, other files are kept",
    )
    return p


def parse_deltas(text: str | None) -> list[float] | None:
    if text is None:
        return None
    parts = [t.strip() for t in text.split(",")]
    try:
        deltas = [float(t) for t in parts if t]
    except ValueError as exc:
        raise ValueError(f"--deltas: expected comma-separated numbers such as 0.4,0.5, got {text!r}") from exc
    if not deltas or not all(math.isfinite(d) for d in deltas):
        raise ValueError(f"--deltas: expected finite comma-separated numbers such as 0.4,0.5, got {text!r}")
    return deltas


def check_output_folder(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out}: the folder exists and is not empty; choose another folder or pass --force")


def check_base_state(state: dict, base_state: dict, path, base_path) -> None:
    """The step-0 checkpoint must be the base the step checkpoint was trained from."""
    if any(k.startswith(_PROMPTS) for k in base_state):
        raise CheckpointError(f"{base_path}: --base-checkpoint must be a step-0 checkpoint, but this one has step prompts")
    if not any(k.startswith(_PROMPTS) for k in state):
        raise ValueError(f"--base-checkpoint is only used with a step-k checkpoint; {path} is already a step-0 checkpoint")
    if not any(k.startswith(_NO_OBJECT) for k in base_state):
        raise CheckpointError(f"{base_path}: has no no-object MLP ({_NO_OBJECT}*)")
    frozen = sorted(k for k in base_state if not k.startswith(_NO_OBJECT))
    missing = [k for k in frozen if k not in state]
    differ = [
        k
        for k in frozen
        if k in state and (state[k].shape != base_state[k].shape or not torch.equal(state[k].float(), base_state[k].float()))
    ]
    if missing or differ:
        raise CheckpointError(
            f"{base_path}: this is not the step-0 checkpoint {path} was trained from: "
            f"{len(differ)} frozen weights differ{f' (e.g. {differ[:3]})' if differ else ''}"
            f"{f', {len(missing)} are missing from the step checkpoint (e.g. {missing[:3]})' if missing else ''}"
        )


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _class_range(classes) -> str:
    names = [repr(c.name) for c in classes]  # quoted: ADE20K names contain commas
    return ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]}, ..., {names[-1]}"


def summary(model: EclipseModel, checkpoint, out: Path, files: list[str]) -> str:
    groups = model.groups
    step_params = [_count(g) for g in groups[1:]]
    total = _count(model)
    things = sum(c.is_thing for c in groups[0].classes)
    lines = [
        f"converted {checkpoint}",
        f"  backbone: {model.config.backbone} (hidden dim {model.config.hidden_dim}, "
        f"{model.config.decoder_layers} decoder layers)",
        f"  base: {groups[0].num_classes} classes ({things} things, {groups[0].num_classes - things} stuff), "
        f"{groups[0].num_queries} queries, delta {model.deltas[0]:g}, {total - sum(step_params):,} parameters",
    ]
    for t, (g, n) in enumerate(zip(groups[1:], step_params), start=1):
        lines.append(
            f"  step {t}: {g.num_classes} classes ({_class_range(g.classes)}), {g.num_queries} prompts, "
            f"delta {model.deltas[t]:g}, {n:,} parameters"
        )
    lines.append(f"  steps: {model.num_steps}, classes in total: {model.num_classes}")
    lines.append(f"  deltas: {', '.join(f'{d:g}' for d in model.deltas)}")
    lines.append(f"  parameters: {total:,} in total")
    lines.append(f"wrote {out}:")
    lines += [f"  {name} ({(out / name).stat().st_size:,} bytes)" for name in files]
    return "\n".join(lines)


def write_model_folder(model: EclipseModel, out: Path, force: bool = False) -> list[str]:
    """Saves the model folder in one change (`save_model` writes a temporary folder, then moves it in)."""
    check_output_folder(out, force)  # again: the folder may have appeared while converting
    save_model(model, out)
    return [BASE_FILE] + [step_file_name(t) for t in range(1, model.num_steps + 1)] + [MANIFEST_FILE]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        deltas = parse_deltas(args.deltas)
        check_output_folder(out, args.force)
        state = load_official_state_dict(args.checkpoint)
        base_state = None
        if args.base_checkpoint is not None:
            base_state = load_official_state_dict(args.base_checkpoint)
            check_base_state(state, base_state, args.checkpoint, args.base_checkpoint)
        num_steps = len({m.group(1) for k in state if (m := re.match(re.escape(_PROMPTS) + r"(\d+)\.", k))})
        if deltas is not None and len(deltas) != num_steps + 1:
            raise ValueError(
                f"--deltas: the checkpoint has {num_steps + 1} groups (base + {num_steps} steps), "
                f"so give {num_steps + 1} values, got {len(deltas)}"
            )
        # convert_official also records each step's undo deltas from these.
        model = convert_official(state, class_list(args.classes), deltas, base_state=base_state)
        del state, base_state
        files = write_model_folder(model, out, args.force)
    except KeyError as e:
        print(f"error: {args.checkpoint}: the checkpoint lacks the weight {e}; is it an ECLIPSE checkpoint?", file=sys.stderr)
        return 1
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(model, args.checkpoint, out, files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
