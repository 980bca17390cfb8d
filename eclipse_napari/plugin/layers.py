"""Predictions as napari Labels layer data: ids, colours per class, and a features table for hovering.

Pure numpy (no Qt); the widget turns the returned dicts into layers. Segment ids are made unique across
planes of a stack so every segment keeps its own row (class, score) in the features table.
"""

import colorsys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # session imports torch; the widget module must not
    from .session import Prediction

TRANSPARENT = (0.0, 0.0, 0.0, 0.0)
# Metadata keys on layers the plugin makes, so it can find them again.
KIND_KEY = "eclipse_napari"  # "panoptic" | "semantic" | "annotation" | "background"
SOURCE_KEY = "eclipse_image"  # name of the image layer it belongs to
CLASS_KEY = "eclipse_class"  # annotation layers: the class being taught
THING_KEY = "eclipse_is_thing"
IDENTITY_KEY = "eclipse_identity"  # annotation layers: plane index -> identity of the image's pixels there


def _rgba(color, alpha: float = 1.0) -> tuple[float, float, float, float]:
    r, g, b = (c / 255.0 for c in color[:3])
    return (r, g, b, alpha)


def instance_color(color, k: int) -> tuple[float, float, float, float]:
    """The class colour with a brightness/saturation shift per instance, so touching instances of one
    class stay distinguishable while the class hue stays recognisable."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in color[:3]))
    shift = ((k * 0.38196601125) % 1.0 - 0.5) * 0.5  # golden-ratio steps in [-0.25, 0.25]
    v = min(1.0, max(0.25, v + shift))
    s = min(1.0, max(0.2, s - shift / 2))
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (r, g, b, 1.0)


def stack_predictions(
    predictions: "list[tuple[tuple[int, ...], Prediction]]", lead_shape: tuple[int, ...], plane_shape, classes
) -> tuple[dict, dict]:
    """(panoptic, semantic) layer specs: {"data", "features", "colors"} each.

    `predictions` pairs a plane index (into `lead_shape`) with its prediction; planes not predicted stay 0.
    """
    panoptic = np.zeros(tuple(lead_shape) + tuple(plane_shape), np.int32)
    semantic = np.zeros_like(panoptic)
    rows = {"index": [], "class": [], "kind": [], "score": [], "area": [], "plane": []}
    colors: dict = {None: TRANSPARENT, 0: TRANSPARENT}
    offset = 0
    for index, pred in predictions:
        ids = pred.panoptic.astype(np.int64)
        panoptic[index] = np.where(ids > 0, ids + offset, 0)
        semantic[index] = pred.semantic
        for k, seg in enumerate(pred.segments):
            spec = classes[seg.category_id - 1]
            label = seg.id + offset
            rows["index"].append(label)
            rows["class"].append(spec.name)
            rows["kind"].append("thing" if spec.is_thing else "stuff")
            rows["score"].append(round(float(seg.score), 3))
            rows["area"].append(int(seg.area))
            rows["plane"].append(str(index) if index else "")
            colors[label] = instance_color(spec.color, k) if spec.is_thing else _rgba(spec.color)
        offset += max((s.id for s in pred.segments), default=0)
    class_rows = {"index": [0] + [i + 1 for i in range(len(classes))],
                  "class": ["(none)"] + [c.name for c in classes],
                  "kind": [""] + ["thing" if c.is_thing else "stuff" for c in classes]}
    class_colors = {None: TRANSPARENT, 0: TRANSPARENT} | {i + 1: _rgba(c.color) for i, c in enumerate(classes)}
    return ({"data": panoptic, "features": rows, "colors": colors},
            {"data": semantic, "features": class_rows, "colors": class_colors})


def class_pixel_counts(semantic: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per class id 0..num_classes in a semantic map (for the legend)."""
    return np.bincount(semantic.ravel().clip(0, num_classes), minlength=num_classes + 1)


def place_like(layer, image_layer) -> None:
    """Gives a layer made from an image (a prediction, an annotation) the image's whole data-to-world
    transform (scale, translation, rotation, shear, affine): each of its pixels lies on the image pixel
    it belongs to, wherever the image was placed."""
    layer.scale, layer.translate = image_layer.scale, image_layer.translate
    layer.rotate, layer.shear, layer.affine = image_layer.rotate, image_layer.shear, image_layer.affine


def move_above(layers, layer, image_layer) -> None:
    """Moves `layer` right above its image and the image's own layers right above it in the layer list:
    with several images open, side by side or in grid mode (where a layer's place in the list decides
    its cell), it then covers its own image, not the top one."""
    target = layers.index(image_layer) + 1
    while target < len(layers) and layers[target] is not layer and \
            layers[target].metadata.get(SOURCE_KEY) == image_layer.name:
        target += 1
    current = layers.index(layer)
    layers.move(current, target if target <= current else target - 1)


def plane_key(layer_name: str, index: tuple[int, ...]) -> str:
    """The project's name for one plane of an image layer: the layer name, plus the plane for stacks."""
    return layer_name if not index else f"{layer_name}[{','.join(str(i) for i in index)}]"
