"""Settings shared across the layers (no torch here): the losses' settings, which a scenario (data) owns and
the training reads, and command lines record without loading torch."""

from dataclasses import dataclass


@dataclass(frozen=True)
class LossConfig:
    """The published losses: Hungarian matching and losses on 12,544 points per mask, mask BCE and dice
    weights 5, focal class loss with weight 2 at step 0 and 10 at continual steps."""

    base_class_weight: float = 2.0
    step_class_weight: float = 10.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    num_points: int = 12544
    deep_supervision: bool = True
    no_object_weight: float = 1.0  # weight of unmatched queries' no-object target (1 = as published)
