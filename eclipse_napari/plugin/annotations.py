"""Annotation layers <-> the project folder (no Qt here; napari layers are passed in).

Per (new class, image layer) there is an instance layer `<class> on <image>` (label k = instance k) and,
when the user paints "not this class", a background layer `<class> background on <image>` (any label =
background). Each plane of the pair is stored as one annotation of the project: instances plus, if
painted, the background mask; with background painted, Learn treats the rest of that plane as unknown.
"""

import hashlib

import numpy as np

from . import layers as L
from .image_input import to_model_plane
from .project import Project

INSTANCES, BACKGROUND = "annotation", "background"  # the two kinds of annotation layer
BACKGROUND_COLOR = (0.35, 0.35, 0.4, 1.0)


def _plane_indices(shape: tuple[int, ...]):
    """Leading indices of the 2-D planes of a [..., H, W] array."""
    return list(np.ndindex(*shape[:-2])) if len(shape) > 2 else [()]


def layer_name(class_name: str, image_name: str, kind: str = INSTANCES) -> str:
    return f"{class_name} on {image_name}" if kind == INSTANCES else f"{class_name} background on {image_name}"


def new_layer_args(image, class_name: str, is_thing: bool, kind: str = INSTANCES) -> tuple[np.ndarray, dict]:
    """(empty data, add_labels keyword arguments) of an annotation layer of `kind` for `class_name` on `image`."""
    shape = image.data.shape[: image.data.ndim - (1 if image.rgb else 0)]
    metadata = {L.KIND_KEY: kind, L.SOURCE_KEY: image.name, L.CLASS_KEY: class_name, L.THING_KEY: is_thing}
    return np.zeros(shape, np.int32), {"name": layer_name(class_name, image.name, kind), "metadata": metadata,
                                       "scale": image.scale[: len(shape)], "translate": image.translate[: len(shape)]}


def pair_of(layers, class_name: str, image_name: str) -> tuple:
    """(instance layer, background layer) of a class on an image among `layers` (None where absent)."""
    found = {INSTANCES: None, BACKGROUND: None}
    for layer in layers:
        meta = layer.metadata
        if meta.get(L.KIND_KEY) in found and meta.get(L.CLASS_KEY) == class_name and meta.get(L.SOURCE_KEY) == image_name:
            found[meta[L.KIND_KEY]] = layer
    return found[INSTANCES], found[BACKGROUND]


def _digest(instances: np.ndarray, background: np.ndarray | None) -> str:
    h = hashlib.sha1(np.ascontiguousarray(instances, dtype=np.int32).tobytes())
    if background is not None and background.any():
        h.update(np.packbits(background).tobytes())
    return h.hexdigest()


def restore(layer, project: Project, saved: dict) -> int:
    """Puts what the project holds for this layer's class and image back into it (its instances, or its
    background for a background layer), noting it in `saved` as `save` does; returns planes restored."""
    name, source, kind = layer.metadata[L.CLASS_KEY], layer.metadata[L.SOURCE_KEY], layer.metadata[L.KIND_KEY]
    stored = {a.image_key: a for a in project.annotations() if a.class_name == name}
    restored = 0
    for index in _plane_indices(layer.data.shape):
        a = stored.get(L.plane_key(source, tuple(index)))
        if a is None or a.instances.shape != layer.data.shape[-2:]:
            continue
        if kind == BACKGROUND:
            if a.background is None:
                continue
            layer.data[index] = a.background.astype(np.int32)
        else:
            layer.data[index] = a.instances
        saved[(name, source, tuple(index))] = _digest(a.instances, a.background)
        restored += 1
    layer.refresh()
    return restored


def save(instance_layer, background_layer, image, project: Project, saved: dict) -> None:
    """Writes the planes of a class's annotation layers on one image that changed since they were last
    saved (`saved` maps (class, image, plane) to a hash of what the project holds; a never-saved empty
    plane counts as saved). Either layer may be None. An emptied plane removes its stored annotation."""
    some = instance_layer if instance_layer is not None else background_layer
    source, name = some.metadata[L.SOURCE_KEY], some.metadata[L.CLASS_KEY]
    for index in _plane_indices(some.data.shape):
        key = (name, source, tuple(index))
        plane_shape = some.data.shape[-2:]
        instances = (np.zeros(plane_shape, np.int32) if instance_layer is None
                     else np.asarray(instance_layer.data[tuple(index)]).astype(np.int32))
        background = None if background_layer is None else np.asarray(background_layer.data[tuple(index)]) > 0
        digest = _digest(instances, background)
        nothing = not instances.any() and (background is None or not background.any())
        if saved.get(key) == digest or (key not in saved and nothing):
            continue
        plane = to_model_plane(image.data[tuple(index)], image.rgb, image.contrast_limits)
        project.save_annotation(L.plane_key(source, tuple(index)), plane, instances, name, background)
        saved[key] = digest


def examples(project: Project, class_name: str) -> list:
    """The project's non-empty annotations of a class (Annotation objects)."""
    known = {c["name"] for c in project.categories}
    return project.examples_for(class_name) if class_name in known else []


def summary(project: Project, class_name: str) -> str:
    stored = examples(project, class_name)
    instances = sum(len(np.unique(a.instances)) - 1 for a in stored)
    background = sum(a.background is not None for a in stored)
    text = f"{class_name}: {instances} instance(s) on {len(stored)} image(s)"
    if background:
        text += f", background painted on {background} (the rest of those is unknown)"
    return text + ", saved in the project"
