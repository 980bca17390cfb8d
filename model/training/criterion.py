"""One training forward: the loss of the group being learned (group 0 at step 0, the newest at step t).

At step t >= 1 the backbone and pixel decoder are frozen, so their features are computed without a
graph; only the newest prompt group runs through the decoder, with every class head applied (old
heads act as negatives in the sigmoid loss).
"""

import torch.nn.functional as F

from ..network.decoder import DecoderMemory, DecoderOutput
from ..network.eclipse import EclipseModel
from ..settings import LossConfig
from .losses import SetCriterion
from .matcher import HungarianMatcher


def build_criterion(model: EclipseModel, config: LossConfig = LossConfig(), generator=None) -> SetCriterion:
    class_weight = config.base_class_weight if model.num_steps == 0 else config.step_class_weight
    matcher = HungarianMatcher(class_weight, config.mask_weight, config.dice_weight, config.num_points)
    return SetCriterion(
        model.num_classes,
        matcher,
        class_weight=class_weight,
        mask_weight=config.mask_weight,
        dice_weight=config.dice_weight,
        num_points=config.num_points,
        no_object_weight=config.no_object_weight,
        generator=generator,
    )


def pad_targets(targets: list[dict], size: tuple[int, int]) -> list[dict]:
    """Pads target masks (bottom/right, False) to the padded input size."""
    padded = []
    for t in targets:
        masks = t["masks"]
        h, w = masks.shape[-2:]
        masks = F.pad(masks, (0, size[1] - w, 0, size[0] - h)) if (h, w) != tuple(size) else masks
        padded.append({"labels": t["labels"], "masks": masks})
    return padded


def predictions_from_features(model: EclipseModel, features, deep_supervision: bool = True,
                               prepared: DecoderMemory | None = None, levels: dict | None = None) -> list[dict]:
    """Decodes the group being learned from (mask_features, memories), or from (mask_features, None)
    and the decoder memory `prepared` from them; `levels`: the frozen maps an adaptive step reads."""
    return predictions_from_output(decode_learned_group(model, features, prepared, levels), features[0],
                                   deep_supervision)


def decode_learned_group(model: EclipseModel, features, prepared: DecoderMemory | None = None,
                         levels: dict | None = None) -> DecoderOutput:
    mask_features, memories = features
    return model.decode(mask_features, memories, group_ids=[model.num_steps], prepared=prepared, levels=levels)


def predictions_from_output(out: DecoderOutput, mask_features, deep_supervision: bool = True) -> list[dict]:
    """What the set losses read, per decoder prediction (all, or the last only)."""
    indices = range(out.num_predictions) if deep_supervision else [out.num_predictions - 1]
    return [{"logits": out.class_logits(i), "mask_logits": out.mask_logits(mask_features, i)} for i in indices]
