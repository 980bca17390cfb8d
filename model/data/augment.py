"""What a training augmentation may do (`AugmentConfig`) and the published presets per dataset.

Plain dataclasses (no torch), so configurations can be read and recorded without loading it; the
transform itself is `transforms.TrainTransform`.
"""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class AugmentConfig:
    """What a training transform may do. Sizes are (height, width) in pixels."""

    short_sides: tuple[int, ...] = ()  # choices for the resized short side; () = no short-side resize
    max_size: int | None = None  # caps the long side after a short-side resize
    scale_range: tuple[float, float] | None = None  # or: native size times uniform(lo, hi)
    crop_size: tuple[int, int] | None = None  # random crop of at most this size
    native_canvas: bool = False  # crop and pad back to the input's own size (for scenes)
    flip_prob: float = 0.0  # horizontal flip
    # A random symmetry of the square beyond the horizontal flip: a vertical flip and, where the canvas is
    # square, a transpose (together: the eight rotations and mirror images). For images without an "up".
    dihedral: bool = False
    brightness: float = 0.0  # additive delta, uniform in [-b, b] (0..255 units)
    contrast: float = 0.0  # multiplicative factor, uniform in [1-c, 1+c]
    saturation: float = 0.0  # factor, uniform in [1-s, 1+s]
    hue: float = 0.0  # shift, uniform in [-h, h] of the full colour circle
    jitter_prob: float = 0.5  # each colour operation applies with this probability
    pad_size: tuple[int, int] | None = None  # pad bottom/right to this size (after the crop)
    pad_value: int = 128  # image fill of padding (Mask2Former's); masks are padded with False

    def __post_init__(self) -> None:
        if self.short_sides and self.scale_range is not None:
            raise ValueError("AugmentConfig: give short_sides or scale_range, not both")
        if any(s <= 0 for s in self.short_sides):
            raise ValueError(f"AugmentConfig: short_sides must be positive, got {self.short_sides}")
        if self.scale_range is not None and not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"AugmentConfig: scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        for name in ("flip_prob", "jitter_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig: {name} must lie in [0, 1], got {getattr(self, name)}")
        if not (0 <= self.contrast <= 1 and 0 <= self.saturation <= 1 and 0 <= self.hue <= 0.5):
            raise ValueError("AugmentConfig: contrast, saturation must lie in [0, 1] and hue in [0, 0.5]")
        if self.native_canvas and (self.crop_size is not None or self.pad_size is not None):
            raise ValueError("AugmentConfig: native_canvas replaces crop_size and pad_size")


def ade_panoptic() -> AugmentConfig:
    """ADE20K panoptic (Mask2Former / ECLIPSE): short side 320..1280 step 64, crop 640, SSD colour, flip, pad."""
    return AugmentConfig(
        short_sides=tuple(range(320, 1281, 64)),
        max_size=2560,  # Mask2Former's INPUT.MAX_SIZE_TRAIN for ADE20K
        crop_size=(640, 640),
        flip_prob=0.5,
        brightness=32.0,
        contrast=0.5,
        saturation=0.5,
        hue=0.1,  # detectron2's SSD hue delta 18 on OpenCV's 0..180 scale
        pad_size=(640, 640),
    )


def ade_semantic() -> AugmentConfig:
    """ADE20K semantic (Mask2Former / ECLIPSE): short side 256..1024 (512 x 0.5..2.0 in tenths), crop 512,
    SSD colour, flip, pad."""
    return replace(ade_panoptic(), short_sides=tuple(int(x * 0.1 * 512) for x in range(5, 21)), max_size=2048,
                   crop_size=(512, 512), pad_size=(512, 512))


def coco_panoptic() -> AugmentConfig:
    """COCO panoptic as ECLIPSE states it: short side 800, long side at most 1333, flip only."""
    return AugmentConfig(short_sides=(800,), max_size=1333, flip_prob=0.5)


def scenes() -> AugmentConfig:
    """Generated scenes: scale 0.75..1.25, crop/pad back to the native size, flip, mild colour jitter."""
    return AugmentConfig(
        scale_range=(0.75, 1.25),
        native_canvas=True,
        flip_prob=0.5,
        brightness=16.0,
        contrast=0.2,
        saturation=0.2,
        hue=0.02,
    )


def learn() -> AugmentConfig:
    """Learn's few painted images: the scenes' jitter plus every rotation and mirror image, since a few
    examples show a class in few orientations (cells, grains, shapes and photos seen from above)."""
    return replace(scenes(), dihedral=True)


def none() -> AugmentConfig:
    """The identity."""
    return AugmentConfig()
