"""Mask2Former's multi-scale deformable-attention pixel decoder (MSDeformAttnPixelDecoder)."""

import torch
import torch.nn.functional as F
from torch import nn

from .deformable_attention import MSDeformAttn
from .position_encoding import sine_position_encoding

# Encoder levels, coarse to fine: the decoder memory order (strides 32, 16, 8).
ENCODER_LEVELS = ("res5", "res4", "res3")


class ConvNorm(nn.Sequential):
    """Conv2d (optionally biased) followed by GroupNorm(32) and an optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool, relu: bool = False):
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
            nn.GroupNorm(32, out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        nn.init.xavier_uniform_(self[0].weight)
        if bias:
            nn.init.zeros_(self[0].bias)


class DeformableEncoderLayer(nn.Module):
    """Post-norm: src = LN(src + MSDeformAttn(src + pos)); src = LN(src + FFN(src))."""

    def __init__(self, d_model: int, ffn_dim: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes):
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class PixelDecoder(nn.Module):
    """Backbone features -> (mask_features at stride 4, [memories at strides 32, 16, 8]).

    Deformable-attention encoder over res5/res4/res3 (in that order, each with its own input projection
    and level embedding), then one FPN step onto res2 and a 1x1 conv for the mask features.
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        hidden_dim: int = 256,
        mask_dim: int = 256,
        num_layers: int = 6,
        ffn_dim: int = 1024,
        num_heads: int = 8,
        num_points: int = 4,
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.input_proj = nn.ModuleList(
            [ConvNorm(in_channels[name], hidden_dim, 1, bias=True) for name in ENCODER_LEVELS]
        )
        self.level_embed = nn.Parameter(torch.empty(len(ENCODER_LEVELS), hidden_dim))
        nn.init.normal_(self.level_embed)
        self.encoder = nn.ModuleList(
            [
                DeformableEncoderLayer(hidden_dim, ffn_dim, num_heads, len(ENCODER_LEVELS), num_points)
                for _ in range(num_layers)
            ]
        )
        self.adapter = ConvNorm(in_channels["res2"], hidden_dim, 1, bias=False)
        self.layer = ConvNorm(hidden_dim, hidden_dim, 3, bias=False, relu=True)
        self.mask_features = nn.Conv2d(hidden_dim, mask_dim, 1)
        nn.init.xavier_uniform_(self.mask_features.weight)
        nn.init.zeros_(self.mask_features.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        srcs, pos, shapes = [], [], []
        for level, name in enumerate(ENCODER_LEVELS):
            x = self.input_proj[level](features[name])
            h, w = x.shape[-2:]
            shapes.append((h, w))
            srcs.append(x.flatten(2).transpose(1, 2))
            p = sine_position_encoding(h, w, self.hidden_dim // 2, device=x.device, dtype=x.dtype)
            pos.append(p.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        src = torch.cat(srcs, 1)
        pos = torch.cat(pos, 1)
        reference_points = self._reference_points(shapes, src.device, src.dtype)
        reference_points = reference_points.expand(src.shape[0], -1, len(shapes), -1)
        for layer in self.encoder:
            src = layer(src, pos, reference_points, shapes)

        batch = src.shape[0]
        memories = [
            chunk.transpose(1, 2).reshape(batch, self.hidden_dim, h, w)
            for chunk, (h, w) in zip(src.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        y = self.adapter(features["res2"])
        y = y + F.interpolate(memories[-1], size=y.shape[-2:], mode="bilinear", align_corners=False)
        mask_features = self.mask_features(self.layer(y))
        return mask_features, memories

    @staticmethod
    def _reference_points(shapes, device, dtype) -> torch.Tensor:
        """Pixel centres ((j+0.5)/W, (i+0.5)/H) of every level, [1, S, 1, 2]; all valid ratios are 1."""
        points = []
        for h, w in shapes:
            ys, xs = torch.meshgrid(
                (torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
                (torch.arange(w, device=device, dtype=dtype) + 0.5) / w,
                indexing="ij",
            )
            points.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
        return torch.cat(points, 0)[None, :, None, :]
