"""The widget's bookkeeping of annotation layers (no Qt here): which image each was painted on, what
changed since the last save, and what the project holds.

Each annotation layer is tied to its image layer *object*, not to a name: painting after the image
layer was renamed or even deleted is still saved (the image is kept here while its annotation layer
lives), and a layer that leaves the viewer is saved once more before it is forgotten.
"""

from . import annotations
from . import layers as L
from .project import Project, ProjectError


class Painting:
    def __init__(self, project: Project):
        self.project = project
        self._tracked: dict[int, tuple[object, object]] = {}  # id(annotation layer) -> (layer, image layer)
        self._dirty: set[int] = set()
        self.saved: dict = {}  # (class, plane identity) -> digest of what the project holds
        # (class, plane identity) -> marked as painted completely (every instance painted); absent: not
        self.complete: dict = {}

    def use_project(self, project: Project) -> None:
        self.project = project
        self.saved.clear()  # the digests describe the previous project's files
        self.complete.clear()

    def track(self, layer, image) -> annotations.Restored:
        """Ties a new annotation layer to its image and restores what the project holds for it."""
        self._tracked[id(layer)] = (layer, image)
        return annotations.restore(layer, image, self.project, self.saved, self.complete)

    def image_of(self, layer):
        """The image layer an annotation layer was painted on, or None for any other layer."""
        tracked = self._tracked.get(id(layer))
        return None if tracked is None or tracked[0] is not layer else tracked[1]

    def set_complete(self, layer, index: tuple, value: bool) -> None:
        """Marks the plane `index` of an annotation layer's image as painted completely (or not), to be
        saved with its painting."""
        key = (layer.metadata[L.CLASS_KEY], layer.metadata[L.IDENTITY_KEY][tuple(index)])
        self.complete[key] = bool(value)
        self.changed(layer)

    def is_complete(self, layer, index: tuple) -> bool:
        identity = layer.metadata[L.IDENTITY_KEY].get(tuple(index))
        return self.complete.get((layer.metadata[L.CLASS_KEY], identity), False)

    def layer_for(self, class_name: str, image, kind: str):
        """The tracked annotation layer of `kind` for a class on this image layer, or None."""
        for layer, img in self._tracked.values():
            meta = layer.metadata
            if img is image and meta[L.CLASS_KEY] == class_name and meta[L.KIND_KEY] == kind:
                return layer
        return None

    def changed(self, layer) -> None:
        if id(layer) in self._tracked:
            self._dirty.add(id(layer))

    def forget(self, layer) -> list[str]:
        """After the layer left the viewer: saves it once more, then stops tracking it."""
        errors = self.flush()
        self._tracked.pop(id(layer), None)
        return errors

    def flush(self) -> list[str]:
        """Saves every changed (class, image) pair; returns error messages (nothing is lost: a pair
        that failed stays to be saved again)."""
        pairs = {}
        for key in self._dirty:
            layer, image = self._tracked[key]
            pairs[(layer.metadata[L.CLASS_KEY], id(image))] = image
        failed, errors = set(), []
        for (class_name, _), image in pairs.items():
            inst = self.layer_for(class_name, image, annotations.INSTANCES)
            background = self.layer_for(class_name, image, annotations.BACKGROUND)
            try:
                annotations.save(inst, background, image, self.project, self.saved, self.complete)
            except (ProjectError, ValueError, OSError) as exc:
                errors.append(f"could not save the annotations of {class_name!r} on {image.name!r}: {exc}")
                failed |= {id(x) for x in (inst, background) if x is not None}
        self._dirty &= failed
        return errors
