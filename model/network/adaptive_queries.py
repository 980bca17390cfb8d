"""A prompt step whose queries start where the image shows its classes (image-adaptive queries).

The published prompt step has a fixed set of prompts (10, all started from the mean of the base
queries), so it finds at most 10 instances per image and its prompts must learn where to look. Here,
as in Mask DINO's query selection and SimCIS's dynamic queries, each image gets its own queries:

- the step's own pixel features: the frozen mask features (stride 4) plus what a small network of the
  step reads from the frozen backbone's levels (ImageNet features, which still describe images unlike
  anything the base was trained on; its last layer starts at zero, so the step starts on the base's
  features). The queries' masks, their attention masks in the decoder, the scorer and the queries'
  content read them: with the base's mask features alone, masks on real photos came out partial
  (coins, tuning split: IoU 0.2-0.5 with the coin they overlap);
- a light per-step scorer on them predicts, per class, how central a pixel is to an instance of that
  class (1 at an instance's centre, falling to 0 at its boundary; a whole stuff region is 1);
- the top `num_queries` local peaks over every class become the queries: their content is the class's
  learned prompt plus the (projected) pixel feature at the peak, their position the sine encoding of
  the peak's location (the encoding the memory's keys carry) plus a learned per-layer offset;
- the frozen decoder refines them, the step's own mask MLP and class head read them out, exactly as
  for a prompt step (Hungarian-matched losses, logit manipulation with the step's delta).

The scorer is trained beside the decoder losses (`scorer_loss`); the choice of peaks is not
differentiated through. Old groups never see these queries (groups are decoded apart), so their
outputs stay bit-identical, and removing the step restores the model exactly.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from .classes import ClassSpec
from .position_encoding import sine_position_encoding
from .query_groups import add_query_heads

# Initial bias of the scorer's output: sigmoid(-4) ~ 0.02 (most pixels are no instance's centre).
SCORER_PRIOR_LOGIT = -4.0
# A query's mask logits get -d^2 / (2 s^2), d the distance of a pixel to the query's start (in units of
# the image side), s learned per query from its hidden state; it starts at this s for every query.
LOCALITY_START = 0.25
# The frozen maps the step's pixel network reads (`dense_head.DENSE_INPUTS`): the mask features and the
# backbone's levels at strides 4 to 16.
PIXEL_INPUTS = ("mask", "res2", "res3", "res4")


class StepPixels(nn.Module):
    """An adaptive step's pixel features: the frozen mask features plus a learned correction from the
    frozen maps `channels` names (each projected 1x1, resized to stride 4 and summed, then a 3x3 and a
    1x1 convolution; the last starts at zero)."""

    def __init__(self, channels: dict[str, int], dim: int, hidden: int = 64):
        super().__init__()
        self.inputs = tuple(channels)
        self.hidden = hidden
        self.project = nn.ModuleDict({name: nn.Conv2d(c, hidden, 1) for name, c in channels.items()})
        self.mix = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, dim, 1))
        nn.init.zeros_(self.mix[-1].weight)
        nn.init.zeros_(self.mix[-1].bias)

    def forward(self, mask_features: torch.Tensor, levels: dict | None) -> torch.Tensor:
        """`levels`: the frozen maps by name (`DenseInputs.levels`)."""
        if levels is None:
            raise ValueError("an adaptive step reads the backbone's levels: encode the images with the dense "
                             "inputs (EclipseModel.encode_images(dense=True))")
        size = mask_features.shape[-2:]
        x = 0
        for name in self.inputs:
            level = self.project[name](levels[name].to(mask_features.dtype))
            if level.shape[-2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            x = x + level
        return mask_features + self.mix(x)


class AdaptiveGroup(nn.Module):
    """The query group of an adaptive prompt step (see the module docstring)."""

    learner = "adaptive"  # how a step of this kind is learned (`LearnConfig.learner`)
    # Several queries may start on one instance: in the panoptic merge, one of them keeps a segment only
    # if it holds this share of its own mask (Mask2Former's overlap threshold), so duplicates go.
    merge_overlap = 0.8
    # Set from the painting when the step is learned (`negatives.instance_rule`, as for a dense step): its
    # queries' segments smaller than this many pixels (at the image's size) are dropped, as fragments.
    # Tuning split: coins 3 of 4 false positives below half the smallest painted coin, no true one;
    # crowded 19 of 134 false positives, no true one. 0: none dropped (step files written before it).
    min_area = 0.0
    lays_over_previous = False  # as a prompt group's (`QueryGroup.lays_over_previous`)
    rule = None  # as a prompt group's (`QueryGroup.rule`)

    def __init__(self, num_queries: int, dim: int, classes: list[ClassSpec], num_layers: int,
                 owns_no_object_head: bool, delta: float = 0.0, scorer_hidden: int = 64,
                 pixel_channels: dict[str, int] | None = None, pixel_hidden: int = 64):
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"an adaptive step needs at least one query, got {num_queries}")
        if scorer_hidden < 1:
            raise ValueError(f"scorer_hidden must be at least 1, got {scorer_hidden}")
        self.classes = list(classes)
        self.max_queries = int(num_queries)
        self.scorer_hidden = int(scorer_hidden)
        # Named like a prompt group's tensors: no weight decay on them (training.engine).
        self.content = nn.Parameter(torch.zeros(len(classes), dim))  # one learned prompt per class
        self.positions = nn.Parameter(torch.zeros(num_layers, 1, dim))  # per-layer offset of the position
        self.feature_proj = nn.Linear(dim, dim)
        with torch.no_grad():  # starts as the pixel feature itself
            self.feature_proj.weight.copy_(torch.eye(dim))
            self.feature_proj.bias.zero_()
        # None: the frozen mask features alone (no pixel network)
        self.pixels = StepPixels(pixel_channels, dim, pixel_hidden) if pixel_channels else None
        self.scorer = nn.Sequential(nn.Conv2d(dim, scorer_hidden, 1), nn.ReLU(),
                                    nn.Conv2d(scorer_hidden, len(classes), 3, padding=1))
        nn.init.constant_(self.scorer[2].bias, SCORER_PRIOR_LOGIT)
        # How far from where it started a query's mask reaches (see `LOCALITY_START`).
        self.locality = nn.Linear(dim, 1)
        nn.init.zeros_(self.locality.weight)
        nn.init.constant_(self.locality.bias, math.log(math.expm1(LOCALITY_START)))  # softplus^-1
        add_query_heads(self, dim, len(classes), owns_no_object_head, delta)

    @property
    def num_queries(self) -> int:
        """The most queries an image gets (fewer only on an image with fewer feature pixels)."""
        return self.max_queries

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def layout(self) -> dict:
        """What a step file records to rebuild this group (`model.io.model_files`)."""
        layout = {"queries": self.max_queries, "scorer_hidden": self.scorer_hidden, "min_area": float(self.min_area)}
        if self.pixels is not None:
            layout |= {"pixel_inputs": list(self.pixels.inputs), "pixel_hidden": self.pixels.hidden}
        return layout

    def pixel_features(self, mask_features: torch.Tensor, levels: dict | None) -> torch.Tensor | None:
        """The step's own pixel features [B, D, h, w] from the frozen maps `levels` (by name); None
        without a pixel network: the frozen mask features."""
        return None if self.pixels is None else self.pixels(mask_features, levels)

    def score(self, pixel_features: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] logits: how central each stride-4 pixel is to an instance of each class."""
        return self.scorer(pixel_features)

    @torch.no_grad()
    def select(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class [B, K], flat pixel index [B, K]) of the top K local peaks (3x3) over every class."""
        batch, classes, h, w = scores.shape
        peaks = scores == F.max_pool2d(scores, 3, stride=1, padding=1)
        # Non-peaks rank below every peak but stay selectable: a small image may have fewer than K peaks.
        ranked = torch.where(peaks, scores, scores - 1e4).flatten(1)
        k = min(self.max_queries, ranked.shape[1])
        top = ranked.topk(k, dim=1).indices
        return top // (h * w), top % (h * w)

    def queries(self, pixel_features: torch.Tensor):
        """(content [B, K, D], position of decoder layer i as a function of i, mask bias as a function of
        (decoder-normed hidden states [B, K, D], size (h, w)) -> [B, K, h, w]) for a batch."""
        batch, dim, h, w = pixel_features.shape
        with torch.no_grad():  # where queries start is chosen, not learned through (scorer_loss teaches it)
            cls, pixel = self.select(self.score(pixel_features))
        features = pixel_features.flatten(2).transpose(1, 2)  # [B, h*w, D]
        at_peaks = torch.gather(features, 1, pixel[..., None].expand(-1, -1, dim))
        content = self.content[cls] + self.feature_proj(at_peaks)
        encoding = sine_position_encoding(h, w, dim // 2, device=pixel_features.device, dtype=pixel_features.dtype)
        location = encoding.flatten(2).transpose(1, 2).expand(batch, -1, -1)
        location = torch.gather(location, 1, pixel[..., None].expand(-1, -1, dim))
        start = torch.stack([(pixel // w + 0.5) / h, (pixel % w + 0.5) / w], -1)  # [B, K, 2] in 0..1 (y, x)

        squared: dict[tuple[int, int], torch.Tensor] = {}  # size -> [B, K, h, w] squared distances

        def mask_bias(normed_hidden: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            reach = F.softplus(self.locality(normed_hidden))[..., None]  # [B, K, 1, 1]
            if size not in squared:  # the same for every layer reading this size
                ys = (torch.arange(size[0], device=start.device, dtype=normed_hidden.dtype) + 0.5) / size[0]
                xs = (torch.arange(size[1], device=start.device, dtype=normed_hidden.dtype) + 0.5) / size[1]
                dy = (ys[None, None, :, None] - start[..., 0, None, None]) * (size[0] / max(size))
                dx = (xs[None, None, None, :] - start[..., 1, None, None]) * (size[1] / max(size))
                squared[size] = dy**2 + dx**2
            return -squared[size] / (2 * reach**2)

        return content, lambda layer: location + self.positions[layer], mask_bias

    def scorer_loss(self, pixel_features: torch.Tensor, targets: list[dict], class_ids: list[int]) -> torch.Tensor:
        """Binary cross-entropy of the scorer against `centre_targets` on known pixels, positives
        (pixels of an instance) and negatives weighing half each."""
        logits = self.score(pixel_features).float()
        size = tuple(logits.shape[-2:])
        is_thing = [c.is_thing for c in self.classes]
        made = [centre_targets(t, class_ids, is_thing, size) for t in targets]
        target = torch.stack([m[0] for m in made]).to(logits.device)
        known = torch.stack([m[1] for m in made]).to(logits.device)[:, None].expand_as(target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        positive = (target > 0) & known
        negative = (target == 0) & known
        loss = logits.sum() * 0.0
        for part in (positive, negative):
            if part.any():
                loss = loss + 0.5 * bce[part].mean()
        return loss


def centre_targets(target: dict, class_ids: list[int], is_thing: list[bool],
                   size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(target [C, h, w] in 0..1, known [h, w] bool) at `size` (stride 4 of the padded input) from a
    training target {"labels", "masks"}: per thing instance its distance to the boundary over the
    largest, squared (1 at the centre); 1 over a stuff region; 0 elsewhere. Masks labelled 0 are known
    background; where any are given, only pixels some mask covers are known (the painting says nothing
    elsewhere), else every pixel is."""
    masks, labels = target["masks"], target["labels"].cpu().tolist()
    h, w = masks.shape[-2:]
    full = (size[0] * 4, size[1] * 4)
    padded = F.pad(masks.float(), (0, full[1] - w, 0, full[0] - h)) if (h, w) != full else masks.float()
    small = (F.interpolate(padded[None], size=size, mode="area")[0].cpu().numpy() if len(labels)
             else np.zeros((0, *size)))
    index = {c: k for k, c in enumerate(class_ids)}
    out = np.zeros((len(class_ids), *size), np.float32)
    known = np.zeros(size, bool)
    for mask, label, share in zip(masks, labels, small):
        inside = share > 0.5
        known |= share > 0
        if label == 0 or label not in index:
            continue
        if not inside.any():  # smaller than a feature pixel: its most covered one
            inside = share == share.max()
        channel = out[index[label]]
        distance = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        if not is_thing[index[label]]:
            channel[inside] = 1.0
        else:
            channel[inside] = np.maximum(channel[inside], (distance[inside] / distance.max()) ** 2)
    if not any(label == 0 for label in labels):
        known[:] = True
    return torch.from_numpy(out), torch.from_numpy(known)

