"""Annotation layers <-> the project folder: one Labels layer per (new class, image layer), each plane
of it stored as one annotation of the project (no Qt here; napari layers are passed in)."""

import hashlib

import numpy as np

from . import layers as L
from .image_input import to_model_plane
from .project import Project


def _plane_indices(shape: tuple[int, ...]):
    """Leading indices of the 2-D planes of a [..., H, W] array."""
    return list(np.ndindex(*shape[:-2])) if len(shape) > 2 else [()]


def new_layer_args(image, class_name: str, is_thing: bool) -> tuple[np.ndarray, dict]:
    """(empty data, add_labels keyword arguments) of the annotation layer for `class_name` on `image`."""
    shape = image.data.shape[: image.data.ndim - (1 if image.rgb else 0)]
    metadata = {L.KIND_KEY: "annotation", L.SOURCE_KEY: image.name, L.CLASS_KEY: class_name,
                L.THING_KEY: is_thing}
    return np.zeros(shape, np.int32), {"name": f"{class_name} on {image.name}", "metadata": metadata,
                                       "scale": image.scale[: len(shape)], "translate": image.translate[: len(shape)]}


def _digest(plane: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(plane, dtype=np.int32).tobytes()).hexdigest()


def restore(layer, project: Project, saved: dict) -> int:
    """Puts what the project holds for this layer's class and image back into it (noting it in `saved`,
    as `save` does); returns the number of planes restored."""
    name, source = layer.metadata[L.CLASS_KEY], layer.metadata[L.SOURCE_KEY]
    stored = {a.image_key: a for a in project.annotations() if a.class_name == name}
    restored = 0
    for index in _plane_indices(layer.data.shape):
        a = stored.get(L.plane_key(source, tuple(index)))
        if a is not None and a.instances.shape == layer.data.shape[-2:]:
            layer.data[index] = a.instances
            saved[(layer.name, tuple(index))] = _digest(a.instances)
            restored += 1
    layer.refresh()
    return restored


def save(layer, image, project: Project, saved: dict) -> None:
    """Writes the planes of an annotation layer that changed since they were last saved (`saved` maps
    (layer name, plane) to a hash of the stored labels; a never-saved empty plane counts as saved).
    An emptied plane removes its stored annotation."""
    source, name = layer.metadata[L.SOURCE_KEY], layer.metadata[L.CLASS_KEY]
    for index in _plane_indices(layer.data.shape):
        key = (layer.name, tuple(index))
        instances = np.asarray(layer.data[tuple(index)]).astype(np.int32)
        digest = _digest(instances)
        if saved.get(key) == digest or (key not in saved and not instances.any()):
            continue
        plane = to_model_plane(image.data[tuple(index)], image.rgb, image.contrast_limits)
        project.save_annotation(L.plane_key(source, tuple(index)), plane, instances, name)
        saved[key] = digest


def examples(project: Project, class_name: str) -> list:
    """The project's non-empty annotations of a class (Annotation objects)."""
    known = {c["name"] for c in project.categories}
    return project.examples_for(class_name) if class_name in known else []


def summary(project: Project, class_name: str) -> str:
    stored = examples(project, class_name)
    instances = sum(len(np.unique(a.instances)) - 1 for a in stored)
    return f"{class_name}: {instances} instance(s) on {len(stored)} image(s), saved in the project"
