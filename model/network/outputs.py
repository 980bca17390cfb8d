"""What the model computes for a batch of images: the frozen part's features (`Encoded`) and every
group's raw predictions before logit manipulation (`RawPrediction`)."""

from dataclasses import dataclass, field

import torch

from .dense_head import BACKBONE_INPUTS, DenseInputs


@dataclass
class RawPrediction:
    """Decoder output of every group for a batch, before logit manipulation: enough to merge with any
    deltas (the automatic delta choice re-merges one inference many times)."""

    logits: torch.Tensor  # [B, Q, K+1] raw class logits, no-object last
    mask_logits: torch.Tensor  # [B, Q, Hp/4, Wp/4] at stride 4 of the padded input
    padded_size: tuple[int, int]
    image_size: tuple[int, int]
    dense_logits: list[torch.Tensor] = field(default_factory=list)  # per dense step: [B, 2C, Hp/s, Wp/s]
    dense_strides: list[int] = field(default_factory=list)  # s of each dense step's logits
    group_queries: list[int] = field(default_factory=list)  # queries of each query group, in order
    # [B, Q] each query's no-object logit from its own group's head (see `manipulate_logits`); made only
    # where the model uses it (`EclipseModel.old_groups_keep_no_object`), else None
    own_no_object: torch.Tensor | None = None


@dataclass
class Encoded:
    """The frozen part's output for a batch of images (`EclipseModel.encode_images`)."""

    mask_features: torch.Tensor  # [B, D, Hp/4, Wp/4]
    memories: list[torch.Tensor]  # [B, D, h, w] at strides 32, 16, 8
    padded_size: tuple[int, int]
    image_size: tuple[int, int]
    dense: DenseInputs | None = None  # what dense heads read (kept only where the model has dense steps)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor held once (the dense inputs' decoder maps are the tensors above)."""
        tensors = [self.mask_features, *self.memories]
        if self.dense is not None:
            tensors += [self.dense.image] + [self.dense.levels[k] for k in BACKBONE_INPUTS if k in self.dense.levels]
        return tensors

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
