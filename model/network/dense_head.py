"""Dense steps' heads: a step whose classes are found per pixel on the frozen features, not by queries.

A fixed set of queries finds at most that many instances, and few-shot prompts learn small, many or
touching objects poorly. A dense step owns one small convolutional head instead. It reads what the
frozen model computes anyway (`DenseInputs`): the backbone's four levels (strides 4 to 32: general
ImageNet features, which still describe images unlike anything the base was trained on), the pixel
decoder's mask features and memories (what the base learned about its own classes), and the image
itself. The levels meet at stride 4 (a 1x1 projection each, summed, two 3x3 convolutions for context),
whose logits are upsampled to the image's resolution. Optionally (`fine` > 0) a light path adds to them
at full resolution what two 3x3 convolutions read from a fixed filter bank of the pixels; Learn leaves
it out, as it did not improve the tuning split (see `model.interactive.config.LearnConfig.dense_fine`).
What Learn adds instead is a pixel stage (`pixel_stage`): a random forest fitted after the head on the
pixels' filter bank and the head's logits, whose probabilities are blended with the head's.

Per class the head predicts a foreground logit and, for thing classes, a normalised distance to the
instance boundary (1 at an instance's centre, 0 at its edge); `dense_segments` turns them into
segments. Like a prompt step it reads only frozen features: every earlier step's output stays
bit-identical, and removing it restores the model exactly.

`StrideFourHead` is the head of dense steps written by version 1 (the stride-4 mask features and the
stride-8 memory only, output at stride 4): such step files still load and predict as they did.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .image_filters import ImageFilters
from .pixel_stage import PixelStage

# What a dense head may read: backbone levels, then the pixel decoder's mask features and memories.
BACKBONE_INPUTS = ("res2", "res3", "res4", "res5")
DECODER_INPUTS = ("mask", "mem32", "mem16", "mem8")
DENSE_INPUTS = BACKBONE_INPUTS + DECODER_INPUTS
INPUT_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32, "mask": 4, "mem32": 32, "mem16": 16, "mem8": 8}


@dataclass
class DenseInputs:
    """The frozen maps a dense head reads, for a batch: `image` is the normalised, padded input
    [B, 3, Hp, Wp] (what the backbone read); `levels` maps each name of `DENSE_INPUTS` to its map."""

    image: torch.Tensor
    levels: dict[str, torch.Tensor]

    @staticmethod
    def of(image: torch.Tensor, backbone: dict, mask_features: torch.Tensor, memories: list) -> "DenseInputs":
        """From the preprocessed image, the backbone's levels and the pixel decoder's outputs (memories
        at strides 32, 16, 8)."""
        levels = {name: backbone[name] for name in BACKBONE_INPUTS}
        levels |= {"mask": mask_features, "mem32": memories[0], "mem16": memories[1], "mem8": memories[2]}
        return DenseInputs(image, levels)

    @staticmethod
    def cat(items: "list[DenseInputs]") -> "DenseInputs":
        """One batch from inputs of equal size."""
        return DenseInputs(torch.cat([i.image for i in items]),
                           {k: torch.cat([i.levels[k] for i in items]) for k in items[0].levels})

    def crop(self, y0: int, x0: int, height: int, width: int) -> "DenseInputs":
        """The window [y0, y0 + height) x [x0, x0 + width) of the image (multiples of 32: every level
        is cut at its own stride)."""
        if any(v % 32 for v in (y0, x0, height, width)):
            raise ValueError(f"crops are aligned to 32 pixels, got {(y0, x0, height, width)}")
        levels = {}
        for k, v in self.levels.items():
            s = INPUT_STRIDES[k]
            levels[k] = v[..., y0 // s : (y0 + height) // s, x0 // s : (x0 + width) // s]
        return DenseInputs(self.image[..., y0 : y0 + height, x0 : x0 + width], levels)

    def channels_last(self) -> "DenseInputs":
        """The same maps in channels-last memory (the layout a dense head computes in: faster
        convolutions on CPU)."""
        return DenseInputs(_channels_last(self.image), {k: _channels_last(v) for k, v in self.levels.items()})

    def float(self) -> "DenseInputs":
        return DenseInputs(self.image.float(), {k: v.float() for k, v in self.levels.items()})

    def tensors(self) -> list[torch.Tensor]:
        return [self.image, *self.levels.values()]


def dense_input_channels(backbone_channels: dict[str, int], hidden_dim: int) -> dict[str, int]:
    """Channels of each of `DENSE_INPUTS` for a model with these backbone channels and width."""
    return {**{n: int(backbone_channels[n]) for n in BACKBONE_INPUTS}, **{n: hidden_dim for n in DECODER_INPUTS}}


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class DenseHead(nn.Module):
    """DenseInputs -> logits [B, 2C, Hp, Wp] at the image's resolution: C foreground channels, then C
    distance channels (a sigmoid gives the normalised distance; unused for stuff classes).

    `inputs`: which of `DENSE_INPUTS` it reads (with their channels); `hidden`: channels at stride 4;
    `fine`: channels of the optional full-resolution path (0: none), which reads a filter bank of the
    image (`filters`) or the image alone. `forward_both` also gives the stride-4 logits the
    full-resolution path starts from (trained too, so the context part learns on its own)."""

    output_stride = 1

    def __init__(self, inputs: dict[str, int], num_classes: int, hidden: int = 32, fine: int = 0,
                 filters: bool = True, pixel: bool | dict = False):
        super().__init__()
        unknown = sorted(set(inputs) - set(DENSE_INPUTS))
        if unknown or not inputs:
            raise ValueError(f"a dense head reads some of {list(DENSE_INPUTS)}, got {list(inputs)}")
        self.inputs = {k: int(inputs[k]) for k in DENSE_INPUTS if k in inputs}
        self.num_classes, self.hidden, self.fine, self.use_filters = num_classes, hidden, fine, bool(filters)
        self.project = nn.ModuleDict({k: nn.Conv2d(c, hidden, 1) for k, c in self.inputs.items()})
        self.context = nn.Sequential(_conv3(hidden, hidden), nn.ReLU(), _conv3(hidden, hidden), nn.ReLU())
        self.coarse = nn.Conv2d(hidden, 2 * num_classes, 1)
        # fine = 0: no full-resolution path (the stride-4 logits upsampled; measured against it)
        self.reduce = nn.Conv2d(hidden, fine, 1) if fine else None
        self.filters = ImageFilters() if fine and filters else None
        pixel_channels = self.filters.channels if self.filters is not None else 3
        self.pixel = nn.Sequential(nn.Conv2d(pixel_channels, fine, 1), nn.ReLU()) if fine else None
        self.refine = nn.Sequential(
            _conv3(fine + 2 * num_classes, fine), nn.ReLU(),
            _conv3(fine, fine), nn.ReLU(),
            nn.Conv2d(fine, 2 * num_classes, 1),
        ) if fine else None  # fmt: skip
        # A new head starts by predicting nothing (foreground probability ~0.02), as a focal-loss prior,
        # and its full-resolution path starts as the identity on the upsampled stride-4 logits.
        nn.init.normal_(self.coarse.weight, std=0.01)
        nn.init.constant_(self.coarse.bias, 0.0)
        nn.init.constant_(self.coarse.bias[:num_classes], -4.0)
        if self.refine is not None:
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)
        # pixel: a pixel stage, fitted after the head (see `pixel_stage`); a dict: a fitted one's sizes.
        self.pixel_stage = None
        if pixel:
            self.pixel_stage = PixelStage(num_classes, pixel if isinstance(pixel, dict) else None)

    def forward_both(self, x: DenseInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at the image's resolution, logits at stride 4) without the pixel stage: what the head's
        own training optimises. Computed in channels-last memory (about 1.5x faster on CPU); callers may
        pass it so already (`DenseInputs.channels_last`)."""
        x = x.channels_last()
        size = (x.image.shape[-2] // 4, x.image.shape[-1] // 4)
        f = sum(_resize(self.project[k](x.levels[k]), size) for k in self.inputs)
        f = self.context(F.relu(f))
        coarse = self.coarse(f)
        full = tuple(x.image.shape[-2:])
        up = _resize(coarse, full)
        if self.refine is None:
            return up, coarse
        pixels = self.filters(x.image) if self.filters is not None else x.image
        # The context (upsampled) and the pixels' own features meet by a sum, which costs the first
        # full-resolution convolution half of what a concatenation would.
        fine = up + self.refine(torch.cat([_resize(self.reduce(f), full) + self.pixel(pixels), up], 1))
        return fine, coarse

    def pixel_inputs(self, x: DenseInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, logits at the image's resolution): what the pixel stage reads and corrects."""
        logits, _ = self.forward_both(x)
        return x.image, logits

    def forward(self, x: DenseInputs) -> torch.Tensor:
        if self.pixel_stage is None:
            return self.forward_both(x)[0]
        return self.pixel_stage(*self.pixel_inputs(x))

    def layout(self) -> dict:
        """What rebuilds this head (a step file's metadata)."""
        return {"version": 2, "inputs": self.inputs, "hidden": self.hidden, "fine": self.fine,
                "filters": self.use_filters,
                "pixel": False if self.pixel_stage is None else (self.pixel_stage.layout() or True)}


class StrideFourHead(nn.Module):
    """Version 1's dense head (step files written before the full-resolution head): the stride-4 mask
    features and the stride-8 memory -> logits [B, 2C, Hp/4, Wp/4]. Loaded and used for prediction only."""

    output_stride = 4

    def __init__(self, dim: int, num_classes: int, hidden: int = 48):
        super().__init__()
        self.num_classes, self.hidden = num_classes, hidden
        self.layers = nn.Sequential(
            nn.Conv2d(2 * dim, hidden, 1), nn.ReLU(),
            _conv3(hidden, hidden), nn.ReLU(),
            _conv3(hidden, hidden), nn.ReLU(),
            nn.Conv2d(hidden, 2 * num_classes, 1),
        )  # fmt: skip

    def forward(self, x: DenseInputs) -> torch.Tensor:
        mask = x.levels["mask"]
        return self.layers(torch.cat([mask, _resize(x.levels["mem8"], mask.shape[-2:])], 1))

    def layout(self) -> dict:
        return {"hidden": self.hidden}


def build_dense_head(layout: dict, num_classes: int, input_channels: dict[str, int], dim: int) -> nn.Module:
    """The head a step file's layout describes (version 1 files carry only "hidden")."""
    if int(layout.get("version", 1)) == 1:
        return StrideFourHead(dim, num_classes, int(layout["hidden"]))
    inputs = {k: int(v) for k, v in layout["inputs"].items()}
    wrong = {k: (v, input_channels.get(k)) for k, v in inputs.items() if input_channels.get(k) != v}
    if wrong:
        raise ValueError(f"the step's head reads inputs this model does not have (name: (step, model)): {wrong}")
    # "pixel": written since the pixel stage exists (files before it have none)
    return DenseHead(inputs, num_classes, int(layout["hidden"]), int(layout["fine"]), bool(layout["filters"]),
                     layout.get("pixel", False))


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
