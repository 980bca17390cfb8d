"""Baselines at the same budget as ECLIPSE: fine-tuning and joint training.

Both keep a single query group: the base class head grows by the new classes (new rows initialised
like ECLIPSE's new heads, from the no-object row), and then everything trains. Fine-tuning sees only
the current step's labels (and forgets); joint training sees every class's labels at once.
"""

import torch
from torch import nn

from ..network.classes import make_classes
from ..network.eclipse import EclipseModel


@torch.no_grad()
def extend_base_classes(model: EclipseModel, class_names, is_thing, colors=None) -> None:
    """Adds classes to the base group's head (no prompts); the whole model stays trainable."""
    if model.num_steps:
        raise ValueError("fine-tuning baselines extend a single-group model; this one has prompt steps")
    base = model.groups[0]
    new = make_classes(class_names, is_thing, colors, start_index=model.num_classes)
    clash = sorted({c.name for c in new} & {c.name for c in model.classes})
    if clash:
        raise ValueError(f"class names already used: {clash}")
    old_layer = base.class_head.layers[-1]
    no_object_row = base.no_object_head.layers[-1]
    layer = nn.Linear(old_layer.in_features, old_layer.out_features + len(new)).to(old_layer.weight.device)
    layer.weight[: old_layer.out_features] = old_layer.weight
    layer.bias[: old_layer.out_features] = old_layer.bias
    layer.weight[old_layer.out_features :] = no_object_row.weight.expand(len(new), -1)
    layer.bias[old_layer.out_features :] = no_object_row.bias.expand(len(new))
    base.class_head.layers[-1] = layer
    base.classes = base.classes + new
    model.freeze_for_training()
