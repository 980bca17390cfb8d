"""The ECLIPSE model: frozen Mask2Former base plus one prompt group per continual step."""

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adaptive_queries import PIXEL_INPUTS, AdaptiveGroup
from .classes import ClassSpec, distinct_color, make_classes
from .config import ModelConfig
from .decoder import DecoderMemory, DecoderOutput, MaskedAttentionDecoder
from .dense_head import DENSE_INPUTS, DenseHead, DenseInputs, dense_input_channels
from .dense_segments import InstanceRule
from .merging import Merging
from .outputs import Encoded, RawPrediction
from .postprocess import PanopticResult, semantic_inference
from .query_groups import DenseGroup, QueryGroup
from .tiled import TileConfig, image_size, predict_tiled

# Deltas used when a step is added and none is given: the published ADE values (base 0.4, steps 0.5).
DEFAULT_BASE_DELTA = 0.4
DEFAULT_STEP_DELTA = 0.5


class EclipseModel(Merging, nn.Module):
    def __init__(self, config: ModelConfig, backbone: nn.Module, pixel_decoder: nn.Module, decoder: MaskedAttentionDecoder):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.size_divisibility = int(getattr(backbone, "size_divisibility", 32))
        self.register_buffer("pixel_mean", torch.tensor(backbone.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.pixel_std).view(1, 3, 1, 1), persistent=False)
        # Old groups keep their own no-object verdict under logit manipulation (`manipulate_logits`'s
        # own_no_object; not in the paper, so off by default). Step files record it as they record deltas.
        self.old_groups_keep_no_object = False

    # ----------------------------------------------------------------- classes and groups
    @property
    def groups(self) -> list[QueryGroup]:
        return list(self.decoder.groups)

    @property
    def num_steps(self) -> int:
        """Continual steps added on top of the base (group 0)."""
        return len(self.decoder.groups) - 1

    @property
    def classes(self) -> list[ClassSpec]:
        """All classes in learning order; class id c (1-based) is classes[c - 1]."""
        return [c for g in self.decoder.groups for c in g.classes]

    @property
    def num_classes(self) -> int:
        return sum(g.num_classes for g in self.decoder.groups)

    def class_ids(self, group: int) -> list[int]:
        start = sum(g.num_classes for g in self.groups[:group])
        return list(range(start + 1, start + self.groups[group].num_classes + 1))

    @property
    def deltas(self) -> list[float]:
        return [float(g.delta) for g in self.decoder.groups]

    def set_deltas(self, deltas) -> None:
        deltas = [float(d) for d in deltas]
        if len(deltas) != len(self.decoder.groups):
            raise ValueError(f"expected {len(self.decoder.groups)} deltas (one per group), got {len(deltas)}")
        for g, d in zip(self.decoder.groups, deltas):
            g.delta.fill_(d)

    # ----------------------------------------------------------------- continual steps
    @torch.no_grad()
    def add_step(
        self,
        class_names,
        is_thing,
        num_prompts: int,
        colors=None,
        train_no_object: bool = True,
        delta: float = DEFAULT_STEP_DELTA,
    ) -> QueryGroup:
        """Adds step t's prompt group, initialised as ECLIPSE does, and freezes everything else.

        train_no_object=True (the published choice): the step trains its own copy of the no-object MLP,
        which then serves all groups; removing the step restores the previous one exactly.
        """
        classes = self._new_classes(class_names, is_thing, colors)
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        base = self.decoder.groups[0]
        dim, layers = self.config.hidden_dim, self.decoder.num_layers
        group = QueryGroup(num_prompts, dim, classes, layers, train_no_object, delta).to(base.content.device)
        group.content.copy_(base.content.mean(0).expand_as(group.content))
        group.positions.copy_(base.positions.mean((0, 1)).expand_as(group.positions))
        self._append_query_group(group, train_no_object)
        return group

    @torch.no_grad()
    def add_adaptive_step(self, class_names, is_thing, num_queries: int = 100, colors=None,
                          delta: float = DEFAULT_STEP_DELTA, scorer_hidden: int = 64,
                          pixel_inputs=PIXEL_INPUTS, pixel_hidden: int = 64) -> AdaptiveGroup:
        """Adds a prompt step whose queries start, per image, at the top peaks of a per-step scorer on
        its own pixel features (`adaptive_queries`; `pixel_inputs`: the frozen maps its pixel network
        reads, none: the frozen mask features alone): up to `num_queries` instances per image. Heads
        are initialised as a prompt step's; its prompts start at the mean of the base queries."""
        classes = self._new_classes(class_names, is_thing, colors)
        base = self.decoder.groups[0]
        channels = {k: self.dense_input_channels[k] for k in pixel_inputs}
        group = AdaptiveGroup(num_queries, self.config.hidden_dim, classes, self.decoder.num_layers, True, delta,
                              scorer_hidden, channels, pixel_hidden).to(base.content.device)
        group.content.copy_(base.content.mean(0).expand_as(group.content))
        self._append_query_group(group, True)
        return group

    def _append_query_group(self, group, train_no_object: bool) -> None:
        """ECLIPSE's initialisation of a new step's heads (the base's mask MLP, the no-object head as the
        class head of every new class), then appends it and freezes everything else."""
        base = self.decoder.groups[0]
        group.mask_mlp.load_state_dict(base.mask_mlp.state_dict())
        no_object = self.decoder.no_object_head()
        for i in range(2):
            group.class_head.layers[i].load_state_dict(no_object.layers[i].state_dict())
        last, src = group.class_head.layers[2], no_object.layers[2]
        last.weight.copy_(src.weight.expand_as(last.weight))
        last.bias.copy_(src.bias.expand_as(last.bias))
        if train_no_object:
            group.no_object_head.load_state_dict(no_object.state_dict())
        group.previous_deltas = self.deltas  # what removing this step restores
        group.previous_keep_no_object = self.old_groups_keep_no_object
        if not any(g.num_queries for g in self.groups[1:]) and base.delta == 0:  # the first prompt step
            base.delta.fill_(DEFAULT_BASE_DELTA)
        self.decoder.groups.append(group)
        self.freeze_for_training()

    @torch.no_grad()
    def add_dense_step(self, class_names, is_thing, colors=None, hidden: int = 32, fine: int = 0,
                       inputs=DENSE_INPUTS, rule: InstanceRule | None = None, filters: bool = True,
                       pixel: bool = False) -> DenseGroup:
        """Adds a dense step (a per-pixel head on the frozen features and the image, see `dense_head`;
        no queries) and freezes everything else; earlier steps' outputs stay bit-identical and no
        deltas change. `inputs`: which frozen maps the head reads; `filters`: whether its full-resolution
        path reads a fixed filter bank of the image (else the image alone); `pixel`: whether it has a pixel
        stage (a forest fitted after the head, see `pixel_stage`)."""
        classes = self._new_classes(class_names, is_thing, colors)
        channels = self.dense_input_channels
        head = DenseHead({k: channels[k] for k in inputs}, len(classes), hidden, fine, filters, pixel)
        group = DenseGroup(classes, head, rule).to(self.pixel_mean.device)
        group.previous_deltas = self.deltas
        group.previous_keep_no_object = self.old_groups_keep_no_object
        self.decoder.groups.append(group)
        self.freeze_for_training()
        return group

    @property
    def dense_input_channels(self) -> dict[str, int]:
        """Channels of every map a dense head may read (`dense_head.DENSE_INPUTS`)."""
        return dense_input_channels(self.backbone.channels, self.config.hidden_dim)

    @property
    def has_dense_steps(self) -> bool:
        return any(g.num_queries == 0 for g in self.groups)

    @property
    def needs_dense_inputs(self) -> bool:
        """Whether a step reads more than the decoder's inputs (`DenseInputs`: a dense step, or an
        adaptive step's pixel network)."""
        return self.has_dense_steps or any(isinstance(g, AdaptiveGroup) and g.pixels is not None for g in self.groups)

    def _new_classes(self, class_names, is_thing, colors) -> list[ClassSpec]:
        known = {c.name for c in self.classes}
        class_names = list(class_names)
        # A class given no colour (None, or no colours at all) looks unlike every class before it.
        given = list(colors) if colors is not None else [None] * len(class_names)
        if any(c is None for c in given) and len(given) == len(class_names):
            taken = [c.color for c in self.classes] + [c for c in given if c is not None]
            colors = []
            for c in given:
                colors.append(c if c is not None else distinct_color(taken))
                if c is None:
                    taken.append(colors[-1])
        classes = make_classes(class_names, is_thing, colors, start_index=self.num_classes)
        names = [c.name for c in classes]
        duplicates = sorted({n for n in names if n in known or names.count(n) > 1})
        if duplicates:
            raise ValueError(f"class names already used: {duplicates}")
        return classes

    def remove_last_step(self) -> None:
        """Undo: drops the newest step; earlier groups and their deltas are exactly as before it."""
        if self.num_steps == 0:
            raise ValueError("the model has no continual step to remove (only the base)")
        group = self.decoder.groups[-1]
        del self.decoder.groups[-1]
        if group.previous_deltas is not None:
            self.set_deltas(group.previous_deltas)
        self.old_groups_keep_no_object = group.previous_keep_no_object
        self.freeze_for_training()

    def freeze_for_training(self) -> None:
        """Step 0: everything trains. Step t: only the newest group's tensors train."""
        train_all = self.num_steps == 0
        for p in self.parameters():
            p.requires_grad_(train_all)
        if not train_all:
            for p in self.decoder.groups[-1].parameters():
                p.requires_grad_(True)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ----------------------------------------------------------------- forward passes
    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[B,3,H,W] uint8 or float in 0..255 -> normalised, zero-padded (bottom/right) to the stride."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if images.dtype == torch.bool or images.is_complex():
            raise ValueError(f"expected uint8 or float images in 0..255, got dtype {images.dtype}")
        h, w = images.shape[-2:]
        x = (images.to(self.pixel_mean.device, torch.float32) - self.pixel_mean) / self.pixel_std
        d = self.size_divisibility
        x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
        return x, (h, w)

    def preprocess_many(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images [3,H,W] of different sizes -> one normalised batch, each zero-padded to a common size."""
        if not images:
            raise ValueError("no images given")
        normalised = [self.preprocess(img[None])[0] for img in images]
        h = max(x.shape[-2] for x in normalised)
        w = max(x.shape[-1] for x in normalised)
        batch = torch.stack([F.pad(x[0], (0, w - x.shape[-1], 0, h - x.shape[-2])) for x in normalised])
        return batch, [tuple(img.shape[-2:]) for img in images]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The frozen-at-step-t part: backbone and pixel decoder -> (mask_features, memories)."""
        return self.pixel_decoder(self.backbone(x))

    def encode_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], DenseInputs]:
        """`encode`, with what dense heads read besides (the backbone's levels and the image)."""
        features = self.backbone(x)
        mask_features, memories = self.pixel_decoder(features)
        return mask_features, memories, DenseInputs.of(x, features, mask_features, memories)

    def decode(self, mask_features, memories, group_ids=None, record_attention=False,
               prepared: DecoderMemory | None = None, levels: dict | None = None) -> DecoderOutput:
        """`levels`: the frozen maps by name (`DenseInputs.levels`), for an adaptive step's pixel network."""
        return self.decoder(memories, mask_features, group_ids, record_attention, prepared, levels)

    def infer(self, images: torch.Tensor) -> RawPrediction:
        """Every group's predictions for a batch of images (uint8 or float 0..255, [B,3,H,W])."""
        return self.infer_encoded(self.encode_images(images))

    def encode_images(self, images: torch.Tensor, dense: bool | None = None) -> "Encoded":
        """The frozen features of a batch of images, kept to decode them again (after a step is trained).
        `dense`: with what dense heads read (default: when the model has a dense step)."""
        x, image_size = self.preprocess(images)
        if not (self.needs_dense_inputs if dense is None else dense):
            return Encoded(*self.encode(x), tuple(x.shape[-2:]), image_size)
        mask_features, memories, dense = self.encode_dense(x)
        return Encoded(mask_features, memories, tuple(x.shape[-2:]), image_size, dense)

    def infer_encoded(self, encoded: "Encoded") -> RawPrediction:
        """`infer` from features `encode_images` made: only the decoder and the heads run."""
        mask_features, memories = encoded.mask_features, encoded.memories
        dense_groups = [g for g in self.groups if g.num_queries == 0]
        if self.needs_dense_inputs and encoded.dense is None:
            raise ValueError("these features were encoded before the model had a step that reads the backbone's "
                             "levels (a dense or adaptive step): encode them again")
        out = self.decode(mask_features, memories, levels=None if encoded.dense is None else encoded.dense.levels)
        dense = [g.head(encoded.dense) for g in dense_groups]
        return RawPrediction(out.class_logits(-1), out.mask_logits(mask_features), encoded.padded_size,
                             encoded.image_size, dense, [g.head.output_stride for g in dense_groups],
                             [h.shape[1] for h in out.normed_hidden[-1]],
                             self.decoder.own_no_object_logits(out) if self._needs_own_no_object() else None)

    @torch.no_grad()
    def predict(
        self,
        image,
        output_size: tuple[int, int] | None = None,
        object_threshold: float = 0.0,
        overlap_threshold: float = 0.0,
    ) -> PanopticResult:
        """Panoptic segmentation of one image: numpy or tensor, [H,W] grey, [H,W,3|4] or [3,H,W]."""
        raw = self.infer(to_chw_tensor(image)[None])
        return self.merge(raw, 0, None, output_size, object_threshold, overlap_threshold)

    @torch.no_grad()
    def predict_semantic(self, image, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Semantic segmentation of one image (`postprocess.semantic_inference` over the query groups merged
        together, after logit manipulation): int64 [H, W] class ids, 0 where no class scores. The segments
        of dense steps and of steps laid over the previous prediction are laid over it as in `merge`
        (there they come from the panoptic merge)."""
        raw = self.infer(to_chw_tensor(image)[None])
        size = output_size or raw.image_size
        masks = self.resized_masks(raw, 0, size)
        query = [t for t, g in enumerate(self.groups) if g.num_queries]
        together = self._merged_together(query)
        logits, rows = self._group_logits(raw, 0, self.deltas, together)
        semantic = semantic_inference(logits, masks[:rows])
        laid = query[together:] + [t for t, g in enumerate(self.groups) if g.num_queries == 0]
        laid_ids = [c for t in laid for c in self.class_ids(t)]
        if laid_ids:
            merged = self.merge(raw, 0, None, size, masks=masks).semantic.to(semantic.dtype)
            semantic = torch.where(torch.isin(merged, torch.tensor(laid_ids)), merged, semantic)
        return semantic

    @torch.no_grad()
    def predict_image(self, image, tiles: TileConfig | None = TileConfig(), progress=None, cancel=None,
                      object_threshold: float = 0.0, overlap_threshold: float = 0.0,
                      encode: Callable[[object], Encoded] | None = None) -> PanopticResult | None:
        """`predict` at the image's own size, tile by tile where the image is large (see `tiled`), so
        memory stays bounded; `progress(done, total)` after each tile (or the one pass); None when
        `cancel()` turned true before a tile. `encode`: where an image predicted whole gets its frozen
        features (`encode_images` of it, e.g. kept from before; tiles are always encoded)."""
        def one(x):
            return self.predict(x, object_threshold=object_threshold, overlap_threshold=overlap_threshold)

        height, width = image_size(image)
        if tiles is not None and tiles.tiles_needed(height, width):
            return predict_tiled(one, image, tiles, progress, cancel)
        if cancel is not None and cancel():
            return None
        if encode is None:
            result = one(image)
        else:
            result = self.merge(self.infer_encoded(encode(image)), 0, None, None, object_threshold, overlap_threshold)
        if progress is not None:
            progress(1, 1)
        return result


def to_chw_tensor(image) -> torch.Tensor:
    """Accepts [H,W], [H,W,3], [H,W,4] (alpha dropped) or [3,H,W]; returns a float [3,H,W] tensor."""
    if not isinstance(image, torch.Tensor):
        array = np.asarray(image)
        x = torch.as_tensor(array if array.flags.writeable else array.copy())  # e.g. napari's read-only views
    else:
        x = image
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"expected a uint8 or float image in 0..255, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[None].expand(3, -1, -1)
    elif x.ndim == 3 and x.shape[-1] in (3, 4) and x.shape[0] not in (3,):
        x = x[..., :3].permute(2, 0, 1)
    elif not (x.ndim == 3 and x.shape[0] == 3):
        raise ValueError(f"expected an image of shape [H,W], [H,W,3], [H,W,4] or [3,H,W], got {tuple(x.shape)}")
    if min(x.shape[-2:]) < 1:
        raise ValueError(f"the image is empty: shape {tuple(x.shape)}")
    return x.float()
