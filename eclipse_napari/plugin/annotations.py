"""Annotation layers <-> the project folder (no Qt here; napari layers are passed in).

Per (new class, image layer) there is an instance layer `<class> on <image>` (label k = instance k) and,
when the user paints "not this class", a background layer `<class> background on <image>` (any label =
background). Each plane of the pair is stored as one annotation of the project: instances plus, if
painted, the background mask, and whether the plane is marked complete (every instance painted; else
Learn treats its unpainted pixels as unknown).
Planes are stored under the identity of their pixels (`plane_identity`), never under a layer name.
"""

import hashlib
from dataclasses import dataclass, field

import numpy as np

from . import layers as L
from .image_input import to_model_plane
from .project import Project
from .project_files import pixel_hash

INSTANCES, BACKGROUND = "annotation", "background"  # the two kinds of annotation layer
BACKGROUND_COLOR = (0.35, 0.35, 0.4, 1.0)
IDENTITY_PREFIX = "px-"  # image keys that name pixels (projects before keyed images by layer name)


def _plane_indices(shape: tuple[int, ...]):
    """Leading indices of the 2-D planes of a [..., H, W] array."""
    return list(np.ndindex(*shape[:-2])) if len(shape) > 2 else [()]


def plane_identity(plane) -> str:
    """What names one image plane in the project: a hash of its raw pixels (shape, dtype, values), so
    an annotation follows its picture through renames and never lands on other pixels."""
    array = np.ascontiguousarray(np.asarray(plane))
    h = hashlib.blake2b(f"{array.shape}|{array.dtype.str}|".encode(), digest_size=12)
    h.update(array.data)
    return IDENTITY_PREFIX + h.hexdigest()


def identities(image) -> dict[tuple, str]:
    """Plane index -> identity, for every plane of an image layer."""
    shape = image.data.shape[: image.data.ndim - (1 if image.rgb else 0)]
    return {tuple(index): plane_identity(image.data[tuple(index)]) for index in _plane_indices(shape)}


def layer_name(class_name: str, image_name: str, kind: str = INSTANCES) -> str:
    return f"{class_name} on {image_name}" if kind == INSTANCES else f"{class_name} background on {image_name}"


def new_layer_args(image, class_name: str, is_thing: bool, kind: str = INSTANCES) -> tuple[np.ndarray, dict]:
    """(empty data, add_labels keyword arguments) of an annotation layer of `kind` for `class_name` on `image`."""
    shape = image.data.shape[: image.data.ndim - (1 if image.rgb else 0)]
    metadata = {L.KIND_KEY: kind, L.SOURCE_KEY: image.name, L.CLASS_KEY: class_name, L.THING_KEY: is_thing,
                L.IDENTITY_KEY: identities(image)}
    return np.zeros(shape, np.int32), {"name": layer_name(class_name, image.name, kind), "metadata": metadata}


def _digest(instances: np.ndarray, background: np.ndarray | None, complete: bool = False) -> str:
    h = hashlib.sha1(np.ascontiguousarray(instances, dtype=np.int32).tobytes())
    if background is not None and background.any():
        h.update(np.packbits(background).tobytes())
    if complete:
        h.update(b"complete")
    return h.hexdigest()


def source_path(image) -> str | None:
    """The file napari opened the image layer from, if any."""
    path = getattr(getattr(image, "source", None), "path", None)
    return None if path is None else str(path)


@dataclass
class Restored:
    planes: int = 0  # planes restored
    refused: list[str] = field(default_factory=list)  # stored images of the same name whose pixels differ

    def message(self, class_name: str) -> str:
        return (f"not restored: the project holds {class_name!r} painted on {', '.join(self.refused)}, but those "
                "pixels differ from this image's (another picture under the same name?); the stored masks are "
                "kept, and what you paint here is stored separately")


def restore(layer, image, project: Project, saved: dict, complete: dict) -> Restored:
    """Puts what the project holds for this layer's class on this image's pixels back into it (its
    instances, or its background for a background layer), noting it in `saved` as `save` does, and
    whether each plane was marked complete in `complete`. Masks
    stored for an image of the same layer name but other pixels are refused (listed in the result);
    those of projects keyed by layer name are taken over (re-keyed) where the pixels match."""
    name, kind, ids = layer.metadata[L.CLASS_KEY], layer.metadata[L.KIND_KEY], layer.metadata[L.IDENTITY_KEY]
    stored = {a.image_key: a for a in project.annotations() if a.class_name == name}
    names = project.image_names()
    out = Restored()
    for index, identity in ids.items():
        plane_name = L.plane_key(image.name, index)
        a = stored.get(identity)
        if a is None:
            same_name = [k for k, n in names.items() if n == plane_name and k != identity and k in stored]
            for key in same_name:
                legacy = not key.startswith(IDENTITY_PREFIX)
                plane = to_model_plane(image.data[index], image.rgb, image.contrast_limits)
                if legacy and pixel_hash(plane) == pixel_hash(stored[key].image) and identity not in names:
                    project.rekey_image(key, identity, plane_name)  # an old project: same pixels, now by identity
                    a = stored[key]
                    names[identity] = plane_name
                else:
                    out.refused.append(repr(plane_name))
        if a is None or a.instances.shape != layer.data.shape[-2:]:
            continue
        complete[(name, identity)] = a.complete  # whichever of the class's layers opens first
        if kind == BACKGROUND:
            if a.background is None:
                continue
            layer.data[index] = a.background.astype(np.int32)
        else:
            layer.data[index] = a.instances
        saved[(name, identity)] = _digest(a.instances, a.background, a.complete)
        out.planes += 1
    layer.refresh()
    return out


def save(instance_layer, background_layer, image, project: Project, saved: dict, complete: dict) -> None:
    """Writes the planes of a class's annotation layers on one image that changed since they were last
    saved (`saved` maps (class, plane identity) to a hash of what the project holds; a never-saved
    empty plane counts as saved), with whether each is marked complete (`complete`, same keys). Either
    layer may be None; `image` is the image layer they were painted on (kept by the caller even if it
    left the viewer: what the project holds for it is kept). An emptied plane, not marked complete,
    removes its stored annotation."""
    some = instance_layer if instance_layer is not None else background_layer
    name, ids = some.metadata[L.CLASS_KEY], some.metadata[L.IDENTITY_KEY]
    for index, identity in ids.items():
        key = (name, identity)
        plane_shape = some.data.shape[-2:]
        held_instances, held_background, held_complete = None, None, False
        if instance_layer is None or background_layer is None:  # the closed layer's part stays as stored
            held = project.stored_parts(identity, name, instance_layer is None, background_layer is None)
            if held is not None:
                held_instances, held_background, held_complete = held
        if instance_layer is not None:
            instances = np.asarray(instance_layer.data[tuple(index)]).astype(np.int32)
        elif held_instances is not None and held_instances.shape == plane_shape:
            instances = held_instances
        else:
            instances = np.zeros(plane_shape, np.int32)
        if background_layer is not None:
            background = np.asarray(background_layer.data[tuple(index)]) > 0
        else:
            background = held_background if held_background is not None and held_background.shape == plane_shape else None
        whole = complete.get(key, held_complete)
        digest = _digest(instances, background, whole)
        nothing = not instances.any() and (background is None or not background.any()) and not whole
        if saved.get(key) == digest or (key not in saved and nothing):
            continue
        plane = to_model_plane(image.data[tuple(index)], image.rgb, image.contrast_limits)
        project.save_annotation(identity, plane, instances, name, background,
                                name=L.plane_key(image.name, tuple(index)), source=source_path(image),
                                complete=whole)
        saved[key] = digest


def examples(project: Project, class_name: str) -> list:
    """The project's non-empty annotations of a class (Annotation objects)."""
    known = {c["name"] for c in project.categories}
    return project.examples_for(class_name) if class_name in known else []


def summary(project: Project, class_name: str) -> str:
    """What the project holds for a class, and how Learn will read the unpainted pixels."""
    stored = examples(project, class_name)
    instances = sum(len(np.unique(a.instances)) - 1 for a in stored)
    return f"{class_name}: {instances} instance(s) on {len(stored)} image(s), saved in the project. {reading(stored)}"


def reading(stored: list) -> str:
    """How Learn reads the unpainted pixels of these annotations, in words."""
    complete = sum(a.complete for a in stored)
    partly = len(stored) - complete
    strokes = sum(a.background is not None for a in stored if not a.complete)
    parts = []
    if complete:
        parts.append(f"{complete} image(s) marked complete: every unpainted pixel there is 'not this class'")
    if partly:
        parts.append(f"{partly} image(s) partly painted: unpainted pixels there are unknown; 'not this class' is "
                     f"learned from {'your background strokes, ' if strokes else ''}a thin band around each painted "
                     "instance and what the model already knows for sure (tick 'every instance on this image is painted' where "
                     "you painted them all)")
    return "; ".join(parts) + "." if parts else ""
