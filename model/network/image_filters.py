"""A fixed filter bank of the image: the per-pixel features filter-bank pixel classifiers read."""

import torch
import torch.nn.functional as F
from torch import nn


class ImageFilters(nn.Module):
    """A fixed filter bank of the image, the per-pixel features filter-bank pixel classifiers (ilastik,
    APOC) read: per colour channel and scale sigma in `sigmas`, the Gaussian-smoothed intensity, its
    gradient magnitude and the two eigenvalues of its Hessian; plus the image itself. No parameters:
    [B, 3, H, W] normalised image -> [B, 3 + 12 * len(sigmas), H, W]."""

    def __init__(self, sigmas: tuple[float, ...] = (1.0, 2.0, 4.0)):
        super().__init__()
        self.sigmas = tuple(float(s) for s in sigmas)
        for k, sigma in enumerate(self.sigmas):
            radius = int(round(3 * sigma))
            x = torch.arange(-radius, radius + 1, dtype=torch.float32)
            g = torch.exp(-0.5 * (x / sigma) ** 2)
            self.register_buffer(f"gauss{k}", g / g.sum(), persistent=False)

    @property
    def channels(self) -> int:
        return 3 + 12 * len(self.sigmas)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = [image]
        for k in range(len(self.sigmas)):
            g = getattr(self, f"gauss{k}").to(image.dtype)
            smooth = _separable(image, g)
            dy, dx = _derivative(smooth, 2), _derivative(smooth, 3)
            dyy, dxx = _second(smooth, 2), _second(smooth, 3)
            dxy = _derivative(dx, 2)
            half_trace, root = (dxx + dyy) / 2, torch.sqrt(((dxx - dyy) / 2) ** 2 + dxy**2 + 1e-12)
            out += [smooth, torch.sqrt(dx**2 + dy**2 + 1e-12), half_trace + root, half_trace - root]
        return torch.cat(out, 1)


def _separable(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Gaussian smoothing of every channel (the border pixels repeated outwards)."""
    c, r = x.shape[1], kernel.numel() // 2
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _derivative(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Central difference along dim 2 (rows) or 3 (columns)."""
    pad = (0, 0, 1, 1) if dim == 2 else (1, 1, 0, 0)
    x = F.pad(x, pad, mode="replicate")
    return (x.narrow(dim, 2, x.shape[dim] - 2) - x.narrow(dim, 0, x.shape[dim] - 2)) / 2


def _second(x: torch.Tensor, dim: int) -> torch.Tensor:
    pad = (0, 0, 1, 1) if dim == 2 else (1, 1, 0, 0)
    x = F.pad(x, pad, mode="replicate")
    n = x.shape[dim] - 2
    return x.narrow(dim, 2, n) - 2 * x.narrow(dim, 1, n) + x.narrow(dim, 0, n)
