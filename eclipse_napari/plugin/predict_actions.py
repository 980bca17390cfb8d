"""Predict: the chosen image layer (tile by tile when large, plane by plane for stacks) in a worker,
progress, prediction layers and the legend, and the refresh of every prediction after the steps change.
A part of `EclipseWidget` (see widget.py)."""

import numpy as np
from superqt.utils import ensure_main_thread

from . import layers as L
from .image_input import LayerInputError, planes_of
from .state import State


class PredictActions:
    # ================================================================= predict
    def _image_layer(self):
        name = self.image_choice.currentText()
        if not name or name not in self.viewer.layers:
            raise LayerInputError("choose an image layer to segment (open an image or File > Open Sample)")
        return self.viewer.layers[name]

    def _on_active_layer(self, *_) -> None:
        """The legend follows the prediction (or the image) selected in the layer list; the 'every
        instance painted' box follows the annotation selected."""
        self._sync_complete()
        layer = self.viewer.layers.selection.active
        if layer is None or self.session is None:
            return
        source = layer.metadata.get(L.SOURCE_KEY) if layer.metadata.get(L.KIND_KEY) else layer.name
        semantic = next((x for x in self.viewer.layers if x.metadata.get(L.KIND_KEY) == "semantic"
                         and x.metadata.get(L.SOURCE_KEY) == source), None)
        if semantic is not None and source != self.legend.source:
            classes = self.session.classes
            self.legend.set_classes(classes, L.class_pixel_counts(np.asarray(semantic.data), len(classes)), source)

    def _refresh_layer_choices(self, *_) -> None:
        from napari.layers import Image

        current = self.image_choice.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_choice.clear()
        self.image_choice.addItems(names)
        if current in names:
            self.image_choice.setCurrentText(current)

    def _current_plane(self, layer) -> tuple[int, ...] | None:
        """The plane to predict: the one shown, or None (every plane) with "all planes" checked."""
        return None if self.all_planes.isChecked() else self._shown_plane(layer)

    def _shown_plane(self, layer) -> tuple[int, ...]:
        """Leading indices of the layer's plane the viewer shows now."""
        lead = layer.data.ndim - (3 if layer.rgb else 2)
        point = layer.world_to_data(self.viewer.dims.point)
        return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(point[:lead], layer.data.shape[:lead]))

    def predict(self, layer_name: str | None = None) -> None:
        """Predicts the chosen image layer (or `layer_name`, which becomes the chosen one)."""
        if layer_name is not None:
            self.image_choice.setCurrentText(layer_name)
        try:
            layer = self._image_layer()
        except LayerInputError as exc:
            return self._notify(str(exc), "error")
        self._predict_layer(layer)

    def _predict_layer(self, layer) -> None:
        if self.state != State.READY:
            return self._notify(f"cannot predict while {self.state.value}", "warning")
        try:
            planes = planes_of(layer.data, layer.rgb, self._current_plane(layer), layer.contrast_limits)
        except LayerInputError as exc:
            return self._notify(str(exc), "error")
        lead = layer.data.shape[: layer.data.ndim - (3 if layer.rgb else 2)]
        plane_shape = planes[0][1].shape[:2]
        indices = [index for index, _ in planes]

        threads = self.threads.value()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress_label.setText("")

        def run():
            import torch

            torch.set_num_threads(threads)
            alive = self._alive  # after the window closed, no progress reaches the deleted widgets
            return self.session.predict([p for _, p in planes], cancel=self._aborted,
                                        progress=lambda p: self._on_predict_progress(p) if alive else None)

        self._start(run, on_done=lambda preds: self._show_predictions(layer, lead, plane_shape, indices, preds),
                    state=State.PREDICTING)

    @ensure_main_thread
    def _on_predict_progress(self, p) -> None:
        if not self._alive:
            return
        self.progress.setValue(round(1000 * p.fraction))
        where = f"plane {p.plane}/{p.planes}" if p.planes > 1 else ""
        if p.tiles > 1:
            where += (" · " if where else "") + f"tile {p.tile}/{p.tiles}"
        self.progress_label.setText(f"predicted {where}" if where else "")

    def _show_predictions(self, image_layer, lead, plane_shape, indices, predictions) -> None:
        if len(predictions) < len(indices):  # cancelled: show the planes finished, say so
            text = (f"cancelled after {len(predictions)} of {len(indices)} planes" if predictions
                    else "cancelled: nothing was predicted")
            self.progress_label.setText(text)
            if not predictions:
                return self._notify(f"Prediction of {image_layer.name} {text}")
        classes = self.session.classes
        panoptic, semantic = L.stack_predictions(list(zip(indices, predictions)), lead, plane_shape, classes)
        meta = {L.SOURCE_KEY: image_layer.name}
        for kind, spec, visible in (("panoptic", panoptic, not self.semantic.isChecked()),
                                    ("semantic", semantic, self.semantic.isChecked())):
            name = f"{image_layer.name} {kind}"
            colormap = _colormap(spec["colors"])
            if name in self.viewer.layers:
                target = self.viewer.layers[name]
                target.data, target.features, target.colormap = spec["data"], spec["features"], colormap
                L.place_like(target, image_layer)  # the image may have been moved since
            else:
                target = self.viewer.add_labels(spec["data"], name=name, features=spec["features"],
                                                colormap=colormap, opacity=0.55, visible=visible,
                                                metadata={**meta, L.KIND_KEY: kind})
                L.place_like(target, image_layer)
                L.move_above(self.viewer.layers, target, image_layer)
        self.legend.set_classes(classes, L.class_pixel_counts(semantic["data"], len(classes)), image_layer.name)
        found = sum(len(p.segments) for p in predictions)
        if len(predictions) == len(indices):
            self.progress_label.setText("")
        self._notify(f"{image_layer.name}: {found} segments in {len(predictions)} plane(s)")

    def _show_semantic(self, semantic: bool) -> None:
        """Switches every prediction shown between its panoptic and its semantic layer."""
        for layer in self.viewer.layers:
            kind = layer.metadata.get(L.KIND_KEY)
            if kind in ("panoptic", "semantic"):
                layer.visible = (kind == "semantic") == semantic

    def _repredict(self) -> None:
        """Refreshes every prediction shown (after the steps changed), one image after the other."""
        sources = [layer.metadata[L.SOURCE_KEY] for layer in self.viewer.layers
                   if layer.metadata.get(L.KIND_KEY) == "panoptic"]
        self._repredict_queue = list(dict.fromkeys(sources))
        self._predict_next()

    def _predict_next(self) -> None:
        while self._repredict_queue and self.state == State.READY:
            name = self._repredict_queue.pop(0)
            if name in self.viewer.layers:
                return self._predict_layer(self.viewer.layers[name])



def _colormap(colors: dict):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=colors)
