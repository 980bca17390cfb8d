"""The groups of a model: the base queries (group 0), the prompt set of each continual step (group t >= 1),
or a dense step (no queries, a per-pixel head)."""

import torch
from torch import nn

from .classes import ClassSpec
from .dense_segments import InstanceRule
from .transformer_layers import MLP


def add_query_heads(group: nn.Module, dim: int, num_classes: int, owns_no_object_head: bool, delta: float) -> None:
    """What every group with queries has: its mask MLP, class head, optional no-object head, delta, and
    the deltas to restore when it is removed."""
    group.mask_mlp = MLP(dim, dim, dim, 3)
    group.class_head = MLP(dim, dim, num_classes, 3)
    group.no_object_head = MLP(dim, dim, 1, 3) if owns_no_object_head else None
    group.register_buffer("delta", torch.tensor(float(delta)))
    # Every group's delta just before this step was added: removing the step restores them (steps
    # re-tune earlier deltas). None for the base group.
    group.previous_deltas = None
    group.previous_keep_no_object = False  # the model's `old_groups_keep_no_object` before this step


class QueryGroup(nn.Module):
    """Queries with their own mask MLP, class head and logit-manipulation delta.

    `positions` has one row set per decoder layer for prompts ("deep" prompts) and a single set shared by
    all layers for the base queries. A group may own a no-object head: the model uses the newest one, so
    removing a step restores the previous no-object head exactly.
    """

    def __init__(
        self,
        num_queries: int,
        dim: int,
        classes: list[ClassSpec],
        num_position_sets: int,
        owns_no_object_head: bool,
        delta: float = 0.0,
    ):
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"a query group needs at least one query, got {num_queries}")
        self.classes = list(classes)
        self.content = nn.Parameter(torch.randn(num_queries, dim))
        self.positions = nn.Parameter(torch.randn(num_position_sets, num_queries, dim))
        add_query_heads(self, dim, len(classes), owns_no_object_head, delta)

    @property
    def num_queries(self) -> int:
        return self.content.shape[0]

    learner = "prompts"  # how a step of this kind is learned (`LearnConfig.learner`)
    merge_overlap = 0.0  # the panoptic merge's overlap threshold for its queries (at least this)
    min_area = 0.0  # its queries' segments smaller than this (pixels at the image's size) are dropped
    # False (as published): merged with the old queries, logit manipulation deciding every pixel. True: its
    # segments (so merged) are laid over the prediction before it, which stays as it was elsewhere
    # (`EclipseModel.merge`); set by Learn (`LearnConfig.lay_over_previous`).
    lays_over_previous = False
    # Laid over: which pixels of the previous prediction its segments may take (`InstanceRule.claim`, the
    # dense step's rule; its other fields are unused). None: every pixel its segments hold.
    rule: InstanceRule | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def position(self, layer: int) -> torch.Tensor:
        return self.positions[layer if self.positions.shape[0] > 1 else 0]

    def pixel_features(self, mask_features: torch.Tensor, levels) -> None:
        """None: the group's masks read the frozen mask features (see `MaskedAttentionDecoder`)."""
        return None

    def queries(self, mask_features: torch.Tensor):
        """(content [B, Q, D], position of decoder layer i as a function of i, mask bias: None): the same
        for every image."""
        batch = mask_features.shape[0]
        return (self.content.unsqueeze(0).expand(batch, -1, -1),
                lambda layer: self.position(layer).unsqueeze(0).expand(batch, -1, -1), None)


class DenseGroup(nn.Module):
    """A continual step without queries: its classes are found per pixel by a dense head on the frozen
    features (see `dense_head`). It takes part in the decoder only as class columns that never win
    (so class ids stay the learning order), owns no no-object head, and its delta has no effect."""

    num_queries = 0
    no_object_head = None
    learner = "dense"

    def __init__(self, classes: list[ClassSpec], head: nn.Module, rule: InstanceRule | None = None):
        super().__init__()
        self.classes = list(classes)
        self.head = head
        self.rule = rule or InstanceRule()
        self.register_buffer("delta", torch.tensor(0.0))
        self.previous_deltas: list[float] | None = None
        self.previous_keep_no_object = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)
