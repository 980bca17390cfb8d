"""The dock widget: predict with the frozen model, paint a new class, learn it in the background, manage
steps. Thin by design: model work lives in `session.Session`, annotation files in `project.Project`,
layer data in `layers`; long work runs in napari thread workers and a small state drives the buttons.
torch is imported only when the model loads (in a worker), so the widget appears at once.
"""

import os
import threading
from enum import Enum
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import ensure_main_thread

from model.interactive.config import Example, LearnConfig  # no torch: the widget appears at once
from model.training.progress import RunState

from . import annotations
from . import layers as L
from .image_input import LayerInputError, planes_of
from .legend import Legend
from .painting import Painting
from .project import Project, ProjectError
from .qt_helpers import box, button, row

MODEL_FOLDER = "model"  # inside the project folder: the model with every learned step


class State(Enum):
    LOADING = "loading the model…"
    READY = "ready"
    PREDICTING = "predicting…"
    LEARNING = "learning…"
    FAILED = "no model"


def default_project_folder() -> Path:
    return Path(os.environ.get("ECLIPSE_NAPARI_PROJECT", Path.home() / "eclipse-napari" / "project"))


class EclipseWidget(QWidget):
    def __init__(self, napari_viewer, model_folder=None, project_folder=None, threads: int | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.session = None
        self.project = None
        self.state = State.LOADING
        self.last_message = ""
        self.last_learn = None  # LearnResult of the last Learn
        self._worker = None
        self._cancel = threading.Event()  # our Cancel; napari's close calls worker.quit() instead
        # Qt may delete this widget (window closed) while a worker still runs: its late results are dropped
        # and a running Learn is cancelled, which removes its unfinished step.
        self._alive = [True]
        self.destroyed.connect(lambda *_, alive=self._alive, cancel=self._cancel: (alive.clear(), cancel.set()))
        self.painting: Painting | None = None  # annotation layers <-> their images <-> the project
        self._save_timer = QTimer(self, singleShot=True, interval=300, timeout=self.flush_annotations)
        self._names: dict[int, str] = {}  # id(layer) -> its name, to follow renames
        self._repredict_queue: list[str] = []  # image layers whose predictions still need a refresh
        self._build()
        self._set_project(Path(project_folder) if project_folder else default_project_folder())
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        for layer in self.viewer.layers:
            self._watch_name(layer)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._refresh_layer_choices()
        self.threads.setValue(threads or max(1, (os.cpu_count() or 2) - 1))  # one core stays with the GUI
        self._start(self._load_session, model_folder, on_done=self._on_loaded, state=State.LOADING)

    # ================================================================= layout
    def _build(self) -> None:
        self.status = QLabel(State.LOADING.value, wordWrap=True)
        self.model_label = QLabel("", wordWrap=True)
        self.project_label = QLabel("", wordWrap=True)
        self.threads = QSpinBox(minimum=1, maximum=max(1, os.cpu_count() or 1), toolTip="CPU threads for torch")
        model_box = box("Model", self.model_label, row(QLabel("Threads"), self.threads),
                         row(self.project_label, button("Project…", self._choose_project)))

        self.image_choice = QComboBox(toolTip="the image layer to segment")
        self.all_planes = QCheckBox("all planes (3-D / time series)")
        self.semantic = QCheckBox("semantic view")
        self.semantic.toggled.connect(self._show_semantic)
        self.predict_button = button("Predict", self.predict)
        self.legend = Legend()
        predict_box = box("Predict", self.image_choice, row(self.all_planes, self.semantic), self.predict_button,
                           self.legend)

        self.class_name = QLineEdit(placeholderText="new class name, e.g. horse")
        self.class_kind = QComboBox()
        self.class_kind.addItems(["thing", "stuff"])
        self.annotate_button = button("Annotate selected image", self.add_annotation_layer)
        self.background_button = button("Paint background", self.add_background_layer)
        self.background_button.setToolTip("paint 'not this class' beside a few instances: the rest of the image "
                                          "then counts as unknown, so you need not paint every instance")
        self.teach_info = QLabel("Name a class, then paint its instances (one label per instance); paint a "
                                 "few of them and some background, or all of them.", wordWrap=True)
        teach_box = box("Teach", row(self.class_name, self.class_kind), row(self.annotate_button,
                        self.background_button), self.teach_info)

        self.iterations = QSpinBox(minimum=10, maximum=20000, value=LearnConfig().iterations, singleStep=50)
        self.learn_button = button("Learn", self.learn)
        self.cancel_button = button("Cancel", self.cancel)
        self.progress = QProgressBar()
        self.progress_label = QLabel("", wordWrap=True)
        self.report = QLabel("", wordWrap=True)
        form = QFormLayout()
        form.addRow("Iterations", self.iterations)
        learn_box = box("Learn", form, row(self.learn_button, self.cancel_button), self.progress,
                         self.progress_label, self.report)

        self.steps = QListWidget(wordWrap=True)
        self.undo_button = button("Remove last step", self.undo)
        self.export_button = button("Export step…", lambda: self.export_step(None))
        self.import_button = button("Import step…", lambda: self.import_step(None))
        self.save_button = button("Save model…", lambda: self.save_model(None))
        self.load_button = button("Load model…", lambda: self.load_model(None))
        steps_box = box("Steps", self.steps, row(self.undo_button, self.export_button, self.import_button),
                         row(self.save_button, self.load_button))

        layout = QVBoxLayout(self)
        for widget in (self.status, model_box, predict_box, teach_box, learn_box, steps_box):
            layout.addWidget(widget)
        layout.addStretch(1)
        self._update_buttons()

    def _update_buttons(self) -> None:
        ready = self.state == State.READY
        for b in (self.predict_button, self.learn_button, self.undo_button, self.export_button,
                  self.import_button, self.save_button, self.load_button):
            b.setEnabled(ready)
        self.load_button.setEnabled(ready or self.state == State.FAILED)  # the way out of a failed load
        self.annotate_button.setEnabled(self.state != State.LOADING)
        self.background_button.setEnabled(self.state != State.LOADING)
        self.cancel_button.setEnabled(self.state in (State.LEARNING, State.PREDICTING))
        if ready and self.session is not None:
            self.undo_button.setEnabled(self.session.model.num_steps > 0)
            self.export_button.setEnabled(self.session.model.num_steps > 0)
        self.status.setText(f"<b>{self.state.value}</b>")

    def _set_state(self, state: State) -> None:
        self.state = state
        self._update_buttons()

    def _notify(self, message: str, level: str = "info") -> None:
        self.last_message = message
        {"info": show_info, "warning": show_warning, "error": show_error}[level](message)

    # ================================================================= model and project
    def _load_session(self, folder):
        from .gl_safety import keep_triton_out

        keep_triton_out()  # before torch's stack loads: triton after OpenGL can crash napari
        from .session import Session

        return Session.open(folder)

    def _on_loaded(self, session) -> None:
        self.session = session
        if self.project is not None and (self._model_folder / "model.json").is_file():
            try:
                session.replace_model(self._model_folder)
            except Exception as exc:  # a damaged project model must not block the shipped one
                self._notify(f"could not load the project's model ({exc}); using {session.source}", "warning")
        self._set_state(State.READY)
        self._refresh_model()

    def _refresh_model(self) -> None:
        if self.session is None:
            return
        model = self.session.model
        self.model_label.setText(f"{Path(self.session.source).name}: {model.num_classes} classes, "
                                 f"{model.num_steps} learned step(s), on {self.session.device}")
        self.steps.clear()
        for info in self.session.steps():
            names = ", ".join(f"{c.name} ({'thing' if c.is_thing else 'stuff'})" for c in info.classes)
            label = "base" if info.step == 0 else f"step {info.step}"
            kind = "dense" if info.dense else f"δ={info.delta:g}"
            self.steps.addItem(f"{label}: {names}   {kind}")
        self.steps.setCurrentRow(self.steps.count() - 1)  # shown: the newest step is what Undo and Export act on
        self.legend.set_classes(model.classes)
        self._update_buttons()

    def _choose_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder", str(self.project.root if self.project else ""))
        if folder:
            self._set_project(Path(folder))

    def _set_project(self, folder: Path) -> None:
        try:
            self.project = Project(folder)
            if self.painting is None:
                self.painting = Painting(self.project)
            else:
                self.flush_annotations()  # what was painted goes into the project it was painted for
                self.painting.use_project(self.project)
        except (ProjectError, OSError) as exc:
            self._notify(f"cannot use {folder} as project folder: {exc}", "error")
            return
        self.project_label.setText(f"Project: {folder}")

    @property
    def _model_folder(self) -> Path:
        return self.project.root / MODEL_FOLDER

    # ================================================================= workers
    def _start(self, function, *args, on_done, state: State, **kwargs):
        """Runs `function` in a napari thread worker; the returned value goes to `on_done`."""
        # Errors go to our handler only: without _ignore_errors the worker also re-raises them in the Qt
        # loop, a second message with a traceback.
        worker = create_worker(function, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        worker.returned.connect(self._if_alive(on_done))
        worker.errored.connect(self._if_alive(self._on_error))
        worker.finished.connect(self._if_alive(self._on_finished))
        self._worker = worker
        self._cancel.clear()
        self._set_state(state)
        worker.start()
        return worker

    def _if_alive(self, handler):
        alive = self._alive
        return lambda *args: handler(*args) if alive else None

    def _on_error(self, exc: Exception) -> None:
        if self.session is None:  # the model did not load: one message, and Load model… stays the way out
            self._set_state(State.FAILED)
            return self._notify(f"could not load the model: {exc}. Choose a model folder with 'Load model…'",
                                "error")
        self._notify(f"{type(exc).__name__}: {exc}", "error")

    def _on_finished(self) -> None:
        self._worker = None
        if self.state in (State.PREDICTING, State.LEARNING) or (self.state == State.LOADING and self.session):
            self._set_state(State.READY)
        if self._repredict_queue and self.state == State.READY:
            QTimer.singleShot(0, self._predict_next)

    def _aborted(self) -> bool:
        return self._cancel.is_set() or (self._worker is not None and self._worker.abort_requested)

    def cancel(self) -> None:
        """Stops the running Learn or Predict at its next iteration or plane; Learn then removes its step."""
        if self._worker is not None:
            self._cancel.set()
            self.progress_label.setText("cancelling…")

    # ================================================================= predict
    def _image_layer(self):
        name = self.image_choice.currentText()
        if not name or name not in self.viewer.layers:
            raise LayerInputError("choose an image layer to segment (open an image or File > Open Sample)")
        return self.viewer.layers[name]

    def _on_active_layer(self, *_) -> None:
        """The legend follows the prediction (or the image) selected in the layer list."""
        layer = self.viewer.layers.selection.active
        if layer is None or self.session is None:
            return
        source = layer.metadata.get(L.SOURCE_KEY) if layer.metadata.get(L.KIND_KEY) else layer.name
        semantic = next((x for x in self.viewer.layers if x.metadata.get(L.KIND_KEY) == "semantic"
                         and x.metadata.get(L.SOURCE_KEY) == source), None)
        if semantic is not None and source != self.legend.source:
            classes = self.session.classes
            self.legend.set_classes(classes, L.class_pixel_counts(np.asarray(semantic.data), len(classes)), source)

    def _watch_name(self, layer) -> None:
        self._names[id(layer)] = layer.name
        layer.events.name.connect(lambda event, layer=layer: self._on_layer_renamed(layer))

    def _on_layer_inserted(self, event) -> None:
        self._watch_name(event.value)
        self._refresh_layer_choices()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        self._names.pop(id(layer), None)
        if self.painting is not None and layer.metadata.get(L.KIND_KEY) in (annotations.INSTANCES,
                                                                           annotations.BACKGROUND):
            for error in self.painting.forget(layer):  # its last strokes are saved, then it is forgotten
                self._notify(error, "error")
        self._refresh_layer_choices()

    def _on_layer_renamed(self, layer) -> None:
        """An image layer renamed: its prediction and annotation layers follow, and the chooser keeps it."""
        old, new = self._names.get(id(layer)), layer.name
        self._names[id(layer)] = new
        if old is None or old == new:
            return
        for other in list(self.viewer.layers):
            meta = other.metadata
            if other is layer or meta.get(L.SOURCE_KEY) != old:
                continue
            meta[L.SOURCE_KEY] = new
            kind = meta.get(L.KIND_KEY)
            if kind in ("panoptic", "semantic") and other.name == f"{old} {kind}":
                other.name = f"{new} {kind}"
            elif kind in (annotations.INSTANCES, annotations.BACKGROUND):
                if other.name == annotations.layer_name(meta[L.CLASS_KEY], old, kind):
                    other.name = annotations.layer_name(meta[L.CLASS_KEY], new, kind)
        selected = self.image_choice.currentText()
        self._refresh_layer_choices()
        if selected == old:
            self.image_choice.setCurrentText(new)

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
            return self.session.predict([p for _, p in planes], cancel=self._aborted,
                                        progress=self._on_predict_progress)

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
            else:
                self.viewer.add_labels(spec["data"], name=name, features=spec["features"], colormap=colormap,
                                       opacity=0.55, visible=visible, metadata={**meta, L.KIND_KEY: kind},
                                       scale=image_layer.scale[: len(lead) + 2],
                                       translate=image_layer.translate[: len(lead) + 2])
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

    # ================================================================= teach
    def _new_class(self) -> tuple[str, bool]:
        name = self.class_name.text().strip()
        if not name:
            raise ValueError("type a name for the new class first")
        if self.session is not None and name in {c.name for c in self.session.classes}:
            raise ValueError(f"the model already knows a class named {name!r}: choose another name")
        return name, self.class_kind.currentText() == "thing"

    def add_annotation_layer(self, kind: str = annotations.INSTANCES):
        """A Labels layer over the selected image for painting instances of the new class, or (kind
        BACKGROUND) "not this class"; what the project holds for this class and image is restored."""
        try:
            name, is_thing = self._new_class()
            image = self._image_layer()
            known = name in {c["name"] for c in self.project.categories}  # a known class keeps its colour
            self.project.ensure_category(name, is_thing, None if known else _next_class_color(self.session, self.project))
        except (ValueError, LayerInputError) as exc:
            return self._notify(str(exc), "error")
        layer = self.painting.layer_for(name, image, kind)
        if layer is None or layer not in self.viewer.layers:
            data, kwargs = annotations.new_layer_args(image, name, is_thing, kind)
            if kind == annotations.BACKGROUND:  # one grey label: "not this class"
                kwargs["colormap"] = _colormap({None: L.TRANSPARENT, 0: L.TRANSPARENT, 1: annotations.BACKGROUND_COLOR})
                kwargs["opacity"] = 0.6
            layer = self.viewer.add_labels(data, **kwargs)
            restored = self.painting.track(layer, image)
            if restored.refused:
                self._notify(restored.message(name), "warning")
            layer.brush_size = 8 if kind == annotations.INSTANCES else 16
            for event in (layer.events.paint, layer.events.data):
                event.connect(lambda *_, layer=layer: self._annotation_changed(layer))
        if kind == annotations.BACKGROUND:
            layer.selected_label = 1
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self._update_teach_info()
        return layer

    def add_background_layer(self):
        """The background ("not this class") layer of the selected image, in paint mode."""
        return self.add_annotation_layer(annotations.BACKGROUND)

    def _annotation_changed(self, layer) -> None:
        self.painting.changed(layer)
        self._save_timer.start()

    def flush_annotations(self) -> None:
        """Writes changed annotation layers into the project (runs 0.3 s after the last stroke)."""
        if self.painting is None:
            return
        for error in self.painting.flush():
            self._notify(error, "error")
        self._update_teach_info()

    def _update_teach_info(self) -> None:
        name = self.class_name.text().strip()
        if name and self.project is not None:
            self.teach_info.setText(annotations.summary(self.project, name))

    # ================================================================= learn
    def learn(self) -> None:
        if self.state != State.READY:
            return self._notify(f"cannot learn now: {self.state.value}", "warning")
        self.flush_annotations()
        try:
            name, is_thing = self._new_class()
            stored = annotations.examples(self.project, name)
            examples = [Example(a.image, a.instances, a.background) for a in stored]
            if not any(a.instances.any() for a in stored):
                raise ValueError(f"no annotations of {name!r} yet: click 'Annotate selected image' and paint")
            context = self._context_planes({a.image_key for a in stored})
            category = {c["name"]: c for c in self.project.categories}.get(name)
            is_thing = bool(category["isthing"]) if category else is_thing
            color = tuple(category["color"]) if category else None
        except (ValueError, ProjectError) as exc:
            return self._notify(str(exc), "error")
        config = LearnConfig(iterations=self.iterations.value())
        self.progress.setRange(0, config.iterations)
        self.progress.setValue(0)
        self.report.setText("")
        threads = self.threads.value()

        def run():
            import torch

            torch.set_num_threads(threads)
            return self.session.learn(name, is_thing, examples, config, color=color, callback=self._on_progress,
                                      cancel=self._aborted, save_to=self._model_folder, context=context)

        self._start(run, on_done=self._on_learned, state=State.LEARNING)

    def _context_planes(self, annotated: set, limit: int = 8) -> list:
        """The current planes of other open image layers (at most `limit`): Learn takes what the model
        already knows confidently there as "not the new class"."""
        from napari.layers import Image

        out = []
        for layer in self.viewer.layers:
            if not isinstance(layer, Image) or len(out) >= limit:
                continue
            index = self._shown_plane(layer)
            if annotations.plane_identity(layer.data[index]) in annotated:
                continue
            try:
                out += [plane for _, plane in planes_of(layer.data, layer.rgb, index, layer.contrast_limits)]
            except LayerInputError:
                continue  # a layer the model cannot read is simply not used
        return out

    @ensure_main_thread
    def _on_progress(self, p) -> None:
        if not self._alive:
            return
        self.progress.setValue(p.iteration)
        self.progress_label.setText(f"{p.iteration}/{p.total} iterations · loss {p.loss:.3g} · "
                                    f"{p.seconds:.0f} s, about {p.eta_seconds:.0f} s left")

    def _on_learned(self, result) -> None:
        self.last_learn = result
        if result.state == RunState.CANCELLED:
            self.progress_label.setText("cancelled: the model is exactly as before")
            self._notify("Learning cancelled; the model is unchanged")
        else:
            name = self.session.classes[result.class_id - 1].name
            how = "a dense step" if result.delta is None else f"δ = {result.delta:g}"
            self.report.setText(f"Learned <b>{name}</b> in {result.seconds:.0f} s ({how}).{_report(result)}")
            self._notify(f"Learned {name!r} in {result.seconds:.0f} s")
        self._refresh_model()
        QTimer.singleShot(0, self._repredict)

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

    # ================================================================= steps
    def _guarded(self, action, done: str) -> bool:
        if self.state != State.READY:
            self._notify(f"cannot do that while {self.state.value}", "warning")
            return False
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - every failure here is reported, the model is unchanged
            self._notify(str(exc), "error")
            return False
        if done:
            self._notify(done)
        self._refresh_model()
        return True

    def undo(self) -> bool:
        ok = self._guarded(lambda: self.session.undo(self._model_folder), "Removed the last step")
        if ok:
            self.report.setText("")  # it described the step just removed
            self.progress_label.setText("")
            self.last_learn = None
            QTimer.singleShot(0, self._repredict)
        return ok

    def export_step(self, path) -> bool:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export step", "", "Step (*.safetensors)")
            if not path:
                return False
        written = []
        ok = self._guarded(lambda: written.append(self.session.export_step(self.session.model.num_steps, path)),
                           "")
        if ok:
            self._notify(f"Exported step {self.session.model.num_steps} to {written[0]}")
        return ok

    def import_step(self, path) -> bool:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Import step", "", "Step (*.safetensors)")
            if not path:
                return False
        ok = self._guarded(lambda: self.session.import_step(path, self._model_folder), f"Imported {path}")
        if ok:
            QTimer.singleShot(0, self._repredict)
        return ok

    def save_model(self, folder) -> bool:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Save the model into")
            if not folder:
                return False
        return self._guarded(lambda: self.session.save_model(folder), f"Saved the model in {folder}")

    def load_model(self, folder) -> bool:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Load a model folder")
            if not folder:
                return False
        if self.session is None and self.state == State.FAILED:  # nothing loaded yet: open a session on it
            try:
                session = self._load_session(folder)
            except Exception as exc:  # noqa: BLE001 - reported; the widget stays where it was
                self._notify(f"could not load the model from {folder}: {exc}", "error")
                return False
            self._on_loaded(session)
            self._notify(f"Loaded the model from {folder}")
            return True
        ok = self._guarded(lambda: self.session.replace_model(folder), f"Loaded the model from {folder}")
        if ok:
            QTimer.singleShot(0, self._repredict)
        return ok


# ===================================================================== small helpers
def _report(result) -> str:
    """What the step changed, on the painted images and, separately, on the other open images."""
    lines = []
    if result.old_pixels_unchanged is not None:
        lines.append(f"Painted images: old classes unchanged on {100 * result.old_pixels_unchanged:.1f}% of "
                     "the pixels outside the new class.")
    o = result.others
    if o is not None:
        lines.append(f"Other open images ({o.images}, not painted): old classes unchanged on {100 * o.unchanged:.1f}% "
                     f"of the pixels outside the new class; the new class took {100 * o.claimed:.1f}%.")
    return "".join(f"<br>{line}" for line in lines)


def _colormap(colors: dict):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=colors)


def _next_class_color(session, project):
    """A colour for a new class unlike every class of the model and of the project (the model learns
    the class in the colour the project holds for it)."""
    from model.network.classes import distinct_color

    taken = [c.color for c in session.classes] if session is not None else []
    return distinct_color(taken + [tuple(c["color"]) for c in project.categories])
