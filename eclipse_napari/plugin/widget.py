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
        self._dirty_layers: set[str] = set()
        self._saved_planes: dict = {}  # (layer, plane) -> hash of what the project holds: strokes save one plane
        self._save_timer = QTimer(self, singleShot=True, interval=300, timeout=self.flush_annotations)
        self._build()
        self._set_project(Path(project_folder) if project_folder else default_project_folder())
        self.viewer.layers.events.inserted.connect(self._refresh_layer_choices)
        self.viewer.layers.events.removed.connect(self._refresh_layer_choices)
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
        self.legend.set_classes(model.classes)
        self._update_buttons()

    def _choose_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder", str(self.project.root if self.project else ""))
        if folder:
            self._set_project(Path(folder))

    def _set_project(self, folder: Path) -> None:
        try:
            self.project = Project(folder)
            self._saved_planes.clear()  # the hashes describe the previous project's files
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
        worker = create_worker(function, *args, _start_thread=False, **kwargs)
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
        self._notify(f"{type(exc).__name__}: {exc}", "error")
        if self.session is None:
            self._set_state(State.FAILED)

    def _on_finished(self) -> None:
        self._worker = None
        if self.state in (State.PREDICTING, State.LEARNING) or (self.state == State.LOADING and self.session):
            self._set_state(State.READY)

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
        if self.state != State.READY:
            return self._notify(f"cannot predict while {self.state.value}", "warning")
        try:
            if layer_name is not None:
                self.image_choice.setCurrentText(layer_name)
            layer = self._image_layer()
            planes = planes_of(layer.data, layer.rgb, self._current_plane(layer), layer.contrast_limits)
        except LayerInputError as exc:
            return self._notify(str(exc), "error")
        lead = layer.data.shape[: layer.data.ndim - (3 if layer.rgb else 2)]
        plane_shape = planes[0][1].shape[:2]
        indices = [index for index, _ in planes]

        def run():
            return self.session.predict([p for _, p in planes], cancel=self._aborted)

        self._start(run, on_done=lambda preds: self._show_predictions(layer, lead, plane_shape, indices, preds),
                    state=State.PREDICTING)

    def _show_predictions(self, image_layer, lead, plane_shape, indices, predictions) -> None:
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
        counts = L.class_pixel_counts(semantic["data"], len(classes))
        self.legend.set_classes(classes, counts)
        found = sum(len(p.segments) for p in predictions)
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
            self.project.ensure_category(name, is_thing, _next_class_color(self.session))
        except (ValueError, LayerInputError) as exc:
            return self._notify(str(exc), "error")
        data, kwargs = annotations.new_layer_args(image, name, is_thing, kind)
        if kwargs["name"] in self.viewer.layers:
            layer = self.viewer.layers[kwargs["name"]]
        else:
            if kind == annotations.BACKGROUND:  # one grey label: "not this class"
                kwargs["colormap"] = _colormap({None: L.TRANSPARENT, 0: L.TRANSPARENT, 1: annotations.BACKGROUND_COLOR})
                kwargs["opacity"] = 0.6
            layer = self.viewer.add_labels(data, **kwargs)
            annotations.restore(layer, self.project, self._saved_planes)
            layer.brush_size = 8 if kind == annotations.INSTANCES else 16
            for event in (layer.events.paint, layer.events.data):
                event.connect(lambda *_, n=layer.name: self._annotation_changed(n))
        if kind == annotations.BACKGROUND:
            layer.selected_label = 1
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self._update_teach_info()
        return layer

    def add_background_layer(self):
        """The background ("not this class") layer of the selected image, in paint mode."""
        return self.add_annotation_layer(annotations.BACKGROUND)

    def _annotation_changed(self, layer_name: str) -> None:
        self._dirty_layers.add(layer_name)
        self._save_timer.start()

    def flush_annotations(self) -> None:
        """Writes changed annotation layers into the project (runs 0.3 s after the last stroke)."""
        pairs = set()
        for name in sorted(self._dirty_layers):
            layer = self.viewer.layers[name] if name in self.viewer.layers else None  # removed meanwhile?
            if layer is not None:
                pairs.add((layer.metadata[L.CLASS_KEY], layer.metadata[L.SOURCE_KEY]))
        for class_name, source in sorted(pairs):
            if source not in self.viewer.layers:
                continue
            instance_layer, background_layer = annotations.pair_of(self.viewer.layers, class_name, source)
            try:
                annotations.save(instance_layer, background_layer, self.viewer.layers[source], self.project,
                                 self._saved_planes)
            except (ProjectError, ValueError, OSError) as exc:
                self._notify(f"could not save the annotations of {class_name!r} on {source!r}: {exc}", "error")
        self._dirty_layers.clear()
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
            kinds = {c["name"]: bool(c["isthing"]) for c in self.project.categories}
            is_thing = kinds.get(name, is_thing)
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
            return self.session.learn(name, is_thing, examples, config, callback=self._on_progress,
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
            if L.plane_key(layer.name, index) in annotated:
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
            unchanged = "" if result.old_pixels_unchanged is None else (
                f"; old classes unchanged on {100 * result.old_pixels_unchanged:.1f}% of the annotated images' "
                "pixels outside the new class")
            how = "a dense step" if result.delta is None else f"δ = {result.delta:g}"
            self.report.setText(f"Learned <b>{name}</b> in {result.seconds:.0f} s ({how}){unchanged}.")
            self._notify(f"Learned {name!r} in {result.seconds:.0f} s")
        self._refresh_model()
        QTimer.singleShot(0, self._repredict)

    def _repredict(self) -> None:
        """Refreshes the predictions already shown (after the steps changed)."""
        shown = [layer.metadata[L.SOURCE_KEY] for layer in self.viewer.layers
                 if layer.metadata.get(L.KIND_KEY) == "panoptic" and layer.metadata.get(L.SOURCE_KEY) in self.viewer.layers]
        if shown and self.state == State.READY:
            self.predict(shown[0])

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
        self._notify(done)
        self._refresh_model()
        return True

    def undo(self) -> bool:
        ok = self._guarded(lambda: self.session.undo(self._model_folder), "Removed the last step")
        if ok:
            QTimer.singleShot(0, self._repredict)
        return ok

    def export_step(self, path) -> bool:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export step", "", "Step (*.safetensors)")
            if not path:
                return False
        return self._guarded(lambda: self.session.export_step(self.session.model.num_steps, path),
                             f"Exported step {self.session.model.num_steps} to {path}")

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
        ok = self._guarded(lambda: self.session.replace_model(folder), f"Loaded the model from {folder}")
        if ok:
            QTimer.singleShot(0, self._repredict)
        return ok


# ===================================================================== small helpers
def _colormap(colors: dict):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=colors)


def _next_class_color(session):
    """The colour the model will give its next class (model.network.classes.make_classes' default)."""
    from model.network.classes import default_color

    return default_color(session.model.num_classes if session is not None else 0)
