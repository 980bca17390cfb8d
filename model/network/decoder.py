"""The masked-attention decoder with ECLIPSE's query groups and heads.

Every group runs through the same frozen layers with its own queries. Cross-attention and FFN act
per query, self-attention is computed within each group only (block-diagonal), and the memory's keys
and values are projected once per layer and shared. Each group is processed as its own tensor, so an
old group's hidden states, masks and logits cannot depend on later groups: bit-identical by construction.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .position_encoding import sine_position_encoding
from .query_groups import QueryGroup
from .transformer_layers import DecoderLayer

# The class logit a dense step's classes get from every query (sigmoid ~1e-13: they never win a query).
DENSE_CLASS_LOGIT = -30.0


@dataclass
class DecoderOutput:
    """Predictions of the groups that ran, in group order along the query axis.

    Prediction 0 comes from the raw queries, then one per layer. Class logits are computed on demand
    (inference needs only the last; training and checks need all): `class_logits(i)` is [B, Q, K+1] with
    the classes of all groups in learning order, then no-object.
    mask_embeds[i]: [B, Q, D]; masks = einsum("bqc,bchw->bqhw", mask_embed, mask_features).
    blocked[i]: [B, Q, h*w] attention mask that layer i used (True = blocked), before fully blocked rows
    were unblocked (recorded on request).
    """

    normed_hidden: list[list[torch.Tensor]]  # [prediction][group] -> [B, Q_g, D], after the decoder norm
    mask_embeds: list[torch.Tensor]
    classify: Callable[[torch.Tensor], torch.Tensor]
    blocked: list[torch.Tensor] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    # Per group, its own pixel features [B, D, Hp/4, Wp/4] (an adaptive step's), or None: the frozen
    # mask features.
    pixel_features: list[torch.Tensor | None] = field(default_factory=list)
    # Per group, a function adding to its mask logits ((normed hidden, (h, w)) -> [B, Q, h, w]), or None.
    mask_biases: list = field(default_factory=list)

    @property
    def num_predictions(self) -> int:
        return len(self.mask_embeds)

    def class_logits(self, index: int = -1) -> torch.Tensor:
        # Per group, so an old group's logits never share a kernel call with later groups.
        return torch.cat([self.classify(h) for h in self.normed_hidden[index]], 1)

    @property
    def logits(self) -> list[torch.Tensor]:
        return [self.class_logits(i) for i in range(self.num_predictions)]

    def mask_logits(self, mask_features: torch.Tensor, index: int = -1) -> torch.Tensor:
        if all(p is None for p in self.pixel_features) and all(b is None for b in self.mask_biases):
            return torch.einsum("bqc,bchw->bqhw", self.mask_embeds[index], mask_features)
        # Group by group where one reads its own pixel features (old groups' masks computed as before).
        hidden = self.normed_hidden[index]
        embeds = self.mask_embeds[index].split([h.shape[1] for h in hidden], 1)
        masks = []
        for e, h, p, bias in zip(embeds, hidden, self.pixel_features, self.mask_biases):
            m = torch.einsum("bqc,bchw->bqhw", e, mask_features if p is None else p)
            masks.append(m if bias is None else m + bias(h, tuple(m.shape[-2:])))
        return torch.cat(masks, 1)


@dataclass
class DecoderMemory:
    """What the decoder derives from the frozen features before any query runs: per level the mask
    features resized to the level (for the attention masks), per layer the memory's projected keys and
    values. It depends on the features and the frozen layers only, so a continual step's training
    computes it once per (image, augmentation) and keeps it with the features."""

    level_features: list[torch.Tensor]  # [B, D, h*w] per level
    level_sizes: list[tuple[int, int]]  # (h, w) of each level
    # [B, heads, S, D/heads] per layer; or None, with the memories kept instead (projected per use:
    # a third of the bytes, for when a cache cannot hold the projections of every image)
    keys_values: list[tuple[torch.Tensor, torch.Tensor]] | None
    memories: list[torch.Tensor] | None = None

    @staticmethod
    def cat(memories: "list[DecoderMemory]") -> "DecoderMemory":
        """One batch from memories of equal feature size (all with projections, or none)."""
        levels = [torch.cat(level) for level in zip(*(m.level_features for m in memories))]
        sizes = memories[0].level_sizes
        if memories[0].keys_values is None:
            return DecoderMemory(levels, sizes, None, [torch.cat(level) for level in zip(*(m.memories for m in memories))])
        projected = [(torch.cat([kv[0] for kv in layer]), torch.cat([kv[1] for kv in layer]))
                     for layer in zip(*(m.keys_values for m in memories))]
        return DecoderMemory(levels, sizes, projected)

    def without_projections(self, memories: list[torch.Tensor]) -> "DecoderMemory":
        return DecoderMemory(self.level_features, self.level_sizes, None, list(memories))

    def tensors(self) -> list[torch.Tensor]:
        projected = [t for kv in self.keys_values for t in kv] if self.keys_values is not None else self.memories
        return self.level_features + projected


class MaskedAttentionDecoder(nn.Module):
    def __init__(self, dim: int = 256, num_heads: int = 8, ffn_dim: int = 2048, num_layers: int = 9, num_levels: int = 3):
        super().__init__()
        self.dim, self.num_levels = dim, num_levels
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim) for _ in range(num_layers))
        self.level_embed = nn.Parameter(torch.randn(num_levels, dim))
        self.norm = nn.LayerNorm(dim)
        self.groups = nn.ModuleList()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def no_object_head(self) -> nn.Module:
        return next(g.no_object_head for g in reversed(self.groups) if g.no_object_head is not None)

    def own_no_object_head(self, group: int) -> nn.Module:
        """The no-object head group `group` was trained with: the newest one up to that group."""
        return next(g.no_object_head for g in reversed(self.groups[: group + 1]) if g.no_object_head is not None)

    def own_no_object_logits(self, out: "DecoderOutput", index: int = -1) -> torch.Tensor:
        """[B, Q]: each query's no-object logit from its own group's head (`own_no_object_head`)."""
        hidden = out.normed_hidden[index]
        return torch.cat([self.own_no_object_head(g)(h)[..., 0] for g, h in zip(out.group_ids, hidden)], 1)

    def class_logits(self, normed_hidden: torch.Tensor) -> torch.Tensor:
        """Logits of every group's class head, then no-object, for decoder-normed hidden states. A dense
        step's classes get a constant, losing logit: no query ever predicts them."""
        heads = [
            normed_hidden.new_full((*normed_hidden.shape[:-1], g.num_classes), DENSE_CLASS_LOGIT)
            if g.num_queries == 0 else g.class_head(normed_hidden)
            for g in self.groups
        ]  # fmt: skip
        return torch.cat(heads + [self.no_object_head()(normed_hidden)], dim=-1)

    def predict(self, hidden: torch.Tensor, group: QueryGroup) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder-normed hidden states, the group's mask embedding)."""
        h = self.norm(hidden)
        return h, group.mask_mlp(h)

    def prepare(self, memories: list[torch.Tensor], mask_features: torch.Tensor, project: bool = True) -> DecoderMemory:
        """memories: [B,D,h,w] at strides 32/16/8 (layer i reads level i % num_levels); `project`: with
        every layer's keys and values (else the memories, projected when decoding)."""
        sizes = [tuple(m.shape[-2:]) for m in memories]
        levels = self._level_features(sizes, mask_features)
        if not project:
            return DecoderMemory(levels, sizes, None, list(memories))
        inputs = self._memory_inputs(memories)
        return DecoderMemory(levels, sizes, [self._keys_values(i, inputs) for i in range(self.num_layers)])

    @staticmethod
    def _level_features(sizes, mask_features) -> list[torch.Tensor]:
        # Resizing is linear, so masks at a level = einsum with the mask features resized to that level:
        # the same numbers as resizing full-resolution masks, without computing them for every layer.
        return [F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False).flatten(2)
                for size in sizes]

    def _memory_inputs(self, memories) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(memory + level embedding, positional encoding) per level, [B, h*w, D] each."""
        inputs = []
        for level, m in enumerate(memories):
            pos = sine_position_encoding(*m.shape[-2:], self.dim // 2, device=m.device, dtype=m.dtype)
            # One memory layout whatever the caller's (the pixel decoder gives transposed views, a batch
            # made by torch.cat contiguous ones): BLAS sums in a layout-dependent order, and the cached
            # and uncached paths of a step's training must give the same numbers on every machine.
            tokens = m.flatten(2).transpose(1, 2).contiguous()
            inputs.append((tokens + self.level_embed[level], pos.flatten(2).transpose(1, 2)))
        return inputs

    def _keys_values(self, layer: int, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        # Image by image: a BLAS call's summation order may depend on how many rows it gets, and an
        # image's keys and values must not depend on the batch it was projected in (a step's cache
        # projects one image, training without projections a batch).
        memory, pos = inputs[layer % self.num_levels]
        project = self.layers[layer].cross_attn.project_memory
        if memory.shape[0] == 1:
            return project(memory, pos)
        keys, values = zip(*(project(memory[b : b + 1], pos) for b in range(memory.shape[0])))
        return torch.cat(keys), torch.cat(values)

    def forward(
        self,
        memories: list[torch.Tensor] | None,
        mask_features: torch.Tensor,
        group_ids: list[int] | None = None,
        record_attention: bool = False,
        prepared: DecoderMemory | None = None,
        levels: dict[str, torch.Tensor] | None = None,
    ) -> DecoderOutput:
        """memories: [B,D,h,w] at strides 32/16/8 (layer i reads level i % num_levels); or `prepared`
        from them (`prepare`), then `memories` is not read. Without projections prepared, each layer's
        keys and values are projected when the layer runs (one layer's at a time in memory). `levels`:
        the frozen maps by name that a group with its own pixel features reads (`DenseInputs.levels`)."""
        if group_ids is None:
            group_ids = list(range(len(self.groups)))
        group_ids = [g for g in group_ids if self.groups[g].num_queries > 0]  # dense steps have none
        if prepared is None:
            prepared = self.prepare(memories, mask_features, project=False)
        level_features, projected = prepared.level_features, prepared.keys_values
        inputs = self._memory_inputs(prepared.memories) if projected is None else None

        groups = [self.groups[g] for g in group_ids]
        # A group may compute its own pixel features (an adaptive step; None: the frozen mask features),
        # which its masks, attention masks and queries then read. A prompt group's queries are the same
        # for every image; an adaptive group's start at the image.
        pixels = [g.pixel_features(mask_features, levels) for g in groups]
        group_levels = [level_features if p is None else self._level_features(prepared.level_sizes, p)
                        for p in pixels]
        starts = [g.queries(mask_features if p is None else p) for g, p in zip(groups, pixels)]
        hidden = [start[0] for start in starts]
        preds = [self.predict(h, g) for h, g in zip(hidden, groups)]
        biases = [bias for _, _, bias in starts]
        out = DecoderOutput([], [], self.class_logits, group_ids=list(group_ids), pixel_features=pixels,
                            mask_biases=biases)
        self._collect(out, preds)
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            kv = projected[i] if projected is not None else self._keys_values(i, inputs)
            for k, g in enumerate(groups):
                # sigmoid(mask) < 0.5, decided on the logit itself (one op fewer per group and layer).
                logits = torch.einsum("bqc,bcs->bqs", preds[k][1], group_levels[k][level])
                if biases[k] is not None:
                    logits = logits + biases[k](preds[k][0], prepared.level_sizes[level]).flatten(2)
                blocked = logits < 0
                if record_attention:
                    out.blocked.append(blocked)  # flattened per group, regrouped below
                blocked = blocked & ~blocked.all(-1, keepdim=True)  # a query that sees nothing sees everything
                pos = starts[k][1](i)
                hidden[k] = layer(hidden[k], kv, pos, blocked)
                preds[k] = self.predict(hidden[k], g)
            self._collect(out, preds)
        if record_attention:
            n = len(groups)
            out.blocked = [torch.cat(out.blocked[i * n : (i + 1) * n], 1) for i in range(self.num_layers)]
        return out

    @staticmethod
    def _collect(out: DecoderOutput, preds) -> None:
        out.normed_hidden.append([p[0] for p in preds])
        out.mask_embeds.append(torch.cat([p[1] for p in preds], 1))
