"""A dense step's pixel stage: a random forest on the pixels and the head's outputs, at full resolution.

The dense head (see `dense_head`) sees the image through the frozen features at stride 4: it knows
what a region is, but not where its boundary runs nor the colour of a ten-pixel nucleus. Pixel
classifiers (ilastik, APOC, convpaint) fit a random forest on a filter bank of the pixels; from a few
painted strokes a forest generalises where a network extrapolates (measured on the tuning half of the
ihc case with a few painted nuclei: a 2-layer MLP on the same filter bank and pixels reached a pixel
IoU of 0.19-0.53 with the nuclei, the forest 0.70). The pixel
stage stacks such a forest on the head, as ilastik's autocontext stacks a second classifier on the
first: per pixel it reads the image's filter bank (the peers' scales, 1 to 16) and the head's logits
(upsampled; the head's context features as well measured worse on the tuning split: a stuff class
painted as one disc was learned as "near that disc"), and its class probabilities are blended with the
head's, the forest's share per class chosen on its cross-fitted predictions of the painting. Instance separation
still reads the head's distance map.

It is fitted after the head, on the painted pixels (`model.training.pixel_stage`); an unfitted stage
changes nothing.
"""

import torch
from torch import nn

from .forest import TreeEnsemble
from .image_filters import ImageFilters

PIXEL_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)


class PixelStage(nn.Module):
    """(image [B, 3, H, W], the head's logits [B, 2C, H, W]) -> logits whose C foreground channels are
    the log-odds of a blend of the forest's and the head's probabilities, the forest weighing `blend`
    (per class); the distance channels pass unchanged. `forest`: the sizes of a fitted forest (a step
    file's layout; None: empty, to be fitted)."""

    def __init__(self, num_classes: int, forest: dict | None = None):
        super().__init__()
        self.filters = ImageFilters(PIXEL_SIGMAS)
        self.num_classes = num_classes
        self.in_channels = self.filters.channels + 2 * num_classes
        sizes = forest or {"nodes": 0, "trees": 0, "classes": num_classes + 1, "depth": 0}
        if int(sizes["classes"]) != num_classes + 1:
            raise ValueError(f"the pixel stage's forest has {sizes['classes']} outputs, expected {num_classes + 1}")
        self.forest = TreeEnsemble(int(sizes["nodes"]), int(sizes["trees"]), int(sizes["classes"]), int(sizes["depth"]))
        # Per class, the forest's share of the blend with the head (set when fitted).
        self.register_buffer("blend", torch.full((num_classes,), 0.5))

    def features(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The per-pixel inputs [B, in_channels, H, W]."""
        return torch.cat([self.filters(image), logits], 1)

    def forward(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self.forest.fitted:
            return logits
        x = self.features(image, logits)
        b, f, h, w = x.shape
        shares = self.forest(x.permute(0, 2, 3, 1).reshape(-1, f))  # [B*H*W, 1 + C]: background first
        return self.blended(shares[:, 1:].reshape(b, h, w, -1).permute(0, 3, 1, 2), logits)

    def blended(self, forest: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The head's `logits` [B, 2C, H, W] with their foreground channels blended with the forest's
        class probabilities `forest` [B, C, H, W]."""
        c = self.num_classes
        w = self.blend.to(logits.dtype).view(1, -1, 1, 1)
        p = (w * forest.to(logits.dtype) + (1 - w) * logits[:, :c].sigmoid()).clamp(1e-6, 1 - 1e-6)
        return torch.cat([torch.log(p) - torch.log1p(-p), logits[:, c:]], 1)

    def layout(self) -> dict | None:
        return self.forest.layout() if self.forest.fitted else None
