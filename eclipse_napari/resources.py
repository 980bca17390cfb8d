"""What the package ships besides code: the default base model."""

from importlib import resources
from pathlib import Path

SHIPPED_BASE = "scenes_base"  # eclipse_napari/models/<this>: 16 classes of the generated scenes


def shipped_base_path() -> Path:
    """The folder of the shipped base model (EfficientNet-Lite0, trained on the generated scenes)."""
    return Path(str(resources.files("eclipse_napari").joinpath("models", SHIPPED_BASE)))
