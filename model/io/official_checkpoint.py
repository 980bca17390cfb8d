"""Converts an official ECLIPSE / Mask2Former detectron2 checkpoint (`model_final.pth`, entry "model")
into our base file plus one step file per continual step.

The official model keeps the no-object MLP in `class_embed.cls.0` and retrains it at every step, so a
step-k checkpoint only holds the newest version: it becomes the last step's own no-object head, and
the base's too unless the step-0 checkpoint is given as `base_state`.
"""

import re

import torch

from ..network.build import build_model
from ..network.classes import ClassSpec
from ..network.config import ModelConfig
from ..network.eclipse import EclipseModel
from ..network.query_groups import QueryGroup
from .model_files import load_exact
from .tensor_files import CheckpointError, load_torch_weights_only

PD = "sem_seg_head.pixel_decoder."
PR = "sem_seg_head.predictor."


def load_official_state_dict(path) -> dict[str, torch.Tensor]:
    """The "model" entry of a detectron2 checkpoint, loaded with weights_only=True."""
    data = load_torch_weights_only(path)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not any(k.startswith(PR) for k in state):
        raise CheckpointError(f"{path}: not an official ECLIPSE / Mask2Former checkpoint (no '{PR}*' weights)")
    return {k: torch.as_tensor(v) for k, v in state.items()}


def _backbone_key(key: str) -> str:
    """detectron2 ResNet names -> torchvision names."""
    key = key.replace("backbone.stem.conv1.norm.", "backbone.bn1.").replace("backbone.stem.conv1.", "backbone.conv1.")
    m = re.match(r"backbone\.res(\d)\.(\d+)\.(.*)", key)
    if not m:
        return key
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
    rest = re.sub(r"^shortcut\.norm\.", "downsample.1.", rest)
    rest = re.sub(r"^shortcut\.", "downsample.0.", rest)
    return f"backbone.layer{stage - 1}.{block}.{rest}"


_PIXEL_DECODER_RULES = [
    (r"transformer\.level_embed$", "level_embed"),
    (r"transformer\.encoder\.layers\.(\d+)\.", r"encoder.\1."),
    (r"adapter_1\.norm\.", "adapter.1."),
    (r"adapter_1\.weight$", "adapter.0.weight"),
    (r"layer_1\.norm\.", "layer.1."),
    (r"layer_1\.weight$", "layer.0.weight"),
]
_DECODER_RULES = [
    (r"transformer_self_attention_layers\.(\d+)\.self_attn\.", r"layers.\1.self_attn.attn."),
    (r"transformer_self_attention_layers\.(\d+)\.norm\.", r"layers.\1.self_attn.norm."),
    (r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.", r"layers.\1.cross_attn.attn."),
    (r"transformer_cross_attention_layers\.(\d+)\.norm\.", r"layers.\1.cross_attn.norm."),
    (r"transformer_ffn_layers\.(\d+)\.", r"layers.\1.ffn."),
    (r"decoder_norm\.", "norm."),
    (r"level_embed\.weight$", "level_embed"),
]


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        new = re.sub(pattern, repl, key)
        if new != key:
            return new
    return key


def _count(state, pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def infer_config(state: dict[str, torch.Tensor], num_heads: int = 8) -> ModelConfig:
    res4_blocks = _count(state, r"backbone\.res4\.(\d+)\.")
    backbone = {6: "resnet50", 23: "resnet101"}.get(res4_blocks)
    if backbone is None:
        raise CheckpointError(f"unsupported backbone: res4 has {res4_blocks} blocks (expected 6 or 23 for R50/R101)")
    offsets = state[PD + "transformer.encoder.layers.0.self_attn.sampling_offsets.weight"].shape[0]
    return ModelConfig(
        backbone=backbone,
        hidden_dim=state[PR + "query_feat.weight"].shape[1],
        num_queries=state[PR + "query_feat.weight"].shape[0],
        num_heads=num_heads,
        decoder_layers=_count(state, re.escape(PR) + r"transformer_ffn_layers\.(\d+)\."),
        decoder_ffn_dim=state[PR + "transformer_ffn_layers.0.linear1.weight"].shape[0],
        pixel_decoder_layers=_count(state, re.escape(PD) + r"transformer\.encoder\.layers\.(\d+)\."),
        pixel_decoder_ffn_dim=state[PD + "transformer.encoder.layers.0.linear1.weight"].shape[0],
        deform_points=offsets // (num_heads * 3 * 2),
    )


def _float(tensors: dict) -> dict:
    return {k: v.float() for k, v in tensors.items()}


def _mlp(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def convert_official(
    state: dict[str, torch.Tensor],
    classes: list[ClassSpec],
    deltas: list[float] | None = None,
    base_state: dict[str, torch.Tensor] | None = None,
    num_heads: int = 8,
) -> EclipseModel:
    """Builds our model (base + steps) holding exactly the official weights.

    `classes` lists at least as many classes as the checkpoint has, in learning order.
    """
    config = infer_config(state, num_heads)
    num_steps = _count(state, re.escape(PR) + r"prompt_feat\.(\d+)\.")
    sizes = [state[f"{PR}class_embed.cls.{k + 1}.layers.2.weight"].shape[0] for k in range(num_steps + 1)]
    if len(classes) < sum(sizes):
        raise CheckpointError(f"the checkpoint has {sum(sizes)} classes but only {len(classes)} class names were given")
    base_classes = classes[: sizes[0]]
    model = build_model(
        config, [c.name for c in base_classes], [c.is_thing for c in base_classes], [c.color for c in base_classes],
        "random",
    )
    ours = {}
    used = set()
    for key, value in state.items():
        if key.startswith("backbone."):
            ours[_backbone_key(key)] = value
        elif key.startswith(PD):
            name = key[len(PD) :]
            ours["pixel_decoder." + _rename(name, _PIXEL_DECODER_RULES)] = value
        elif key.startswith(PR) and re.match(r"(transformer_|decoder_norm|level_embed)", key[len(PR) :]):
            ours["decoder." + _rename(key[len(PR) :], _DECODER_RULES)] = value
        else:
            continue
        used.add(key)

    no_object = _mlp(base_state if base_state is not None else state, PR + "class_embed.cls.0.")
    g0 = "decoder.groups.0."
    ours[g0 + "content"] = state[PR + "query_feat.weight"]
    ours[g0 + "positions"] = state[PR + "query_embed.weight"][None]
    ours[g0 + "delta"] = torch.tensor(0.0)
    for part, prefix in (("mask_mlp.", "mask_embed."), ("class_head.", "class_embed.cls.1.")):
        ours.update({g0 + part + k: v for k, v in _mlp(state, PR + prefix).items()})
    ours.update({g0 + "no_object_head." + k: v for k, v in no_object.items()})
    used |= {k for k in state if re.match(re.escape(PR) + r"(query_feat|query_embed|mask_embed|class_embed\.cls\.[01])\.", k)}
    load_exact(model, _float(ours), "official checkpoint", "converted base model")

    offset = sizes[0]
    for k in range(num_steps):
        step_classes = classes[offset : offset + sizes[k + 1]]
        offset += sizes[k + 1]
        content = state[f"{PR}prompt_feat.{k}.weight"]
        deep = [state[key] for i in range(config.decoder_layers) if (key := f"{PR}prompt_embed.{k}.{i}.weight") in state]
        positions = torch.stack(deep) if deep else state[f"{PR}prompt_embed.{k}.weight"][None]
        last = k == num_steps - 1
        group = QueryGroup(content.shape[0], config.hidden_dim, step_classes, positions.shape[0], last)
        tensors = {"content": content, "positions": positions, "delta": torch.tensor(0.0)}
        mask_prefix = f"{PR}prompt_mask_embed.{k}."
        # Without per-step mask MLPs the prompts share the base one (PROMPT_MASK_MLP False).
        mask = _mlp(state, mask_prefix) or _mlp(state, PR + "mask_embed.")
        tensors.update({"mask_mlp." + n: v for n, v in mask.items()})
        tensors.update({"class_head." + n: v for n, v in _mlp(state, f"{PR}class_embed.cls.{k + 2}.").items()})
        if last:
            tensors.update({"no_object_head." + n: v for n, v in _mlp(state, PR + "class_embed.cls.0.").items()})
        load_exact(group, _float(tensors), "official checkpoint", f"converted step {k + 1}")
        model.decoder.groups.append(group)
        used |= {key for key in state if key.startswith((f"{PR}prompt_feat.{k}.", f"{PR}prompt_embed.{k}.", mask_prefix))}
        used |= {key for key in state if key.startswith(f"{PR}class_embed.cls.{k + 2}.")}
    leftover = sorted(set(state) - used)
    if leftover:
        raise CheckpointError(f"the checkpoint has weights this converter does not know: {leftover[:8]}")
    if deltas is None:
        deltas = [0.4] + [0.5] * num_steps if num_steps else [0.0]
    model.set_deltas(deltas)
    for k, group in enumerate(model.groups[1:], start=1):
        group.previous_deltas = list(model.deltas[:k])
    model.freeze_for_training()
    return model
