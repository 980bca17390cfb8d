"""The dock widget: predict with the frozen model, paint a new class, learn it in the background, manage
steps. Thin by design: model work lives in `session.Session`, annotation files in `project.Project`,
layer data in `layers`; long work runs in napari thread workers and a small state drives the buttons.
The widget is the layout, the state, the workers and the layer bookkeeping; its actions live in one
part per box: `predict_actions`, `teach_actions` (annotations and Learn) and `step_actions`.
torch is imported only when the model loads (in a worker), so the widget appears at once.
"""

import os
import threading
from pathlib import Path

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

from model.interactive.config import LEARNERS, LearnConfig  # no torch: the widget appears at once

from . import annotations
from . import layers as L
from .legend import Legend
from .painting import Painting
from .predict_actions import PredictActions
from .project import Project, ProjectError
from .qt_helpers import box, button, row
from .state import State, default_project_folder
from .step_actions import StepActions
from .teach_actions import TeachActions

MODEL_FOLDER = "model"  # inside the project folder: the model with every learned step
LEARNER_NAMES = {"dense": "dense (per-pixel head)", "prompts": "prompts (ECLIPSE)",  # LearnConfig.learner
                 "adaptive": "adaptive (ECLIPSE)"}


class EclipseWidget(PredictActions, TeachActions, StepActions, QWidget):
    def __init__(self, napari_viewer, model_folder=None, project_folder=None, threads: int | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.session = None
        self.project = None
        self.state = State.LOADING
        self.last_message = ""
        self.last_learn = None  # LearnResult of the last Learn
        self.painting_reading = ""  # how Learn reads the painting of the classes it learns (said at Learn)
        self._worker = None
        self._cancel = threading.Event()  # our Cancel; napari's close calls worker.quit() instead
        # Qt may delete this widget (window closed) while a worker still runs: its late results are dropped
        # and a running Learn is cancelled, which removes its unfinished step.
        self._alive = [True]
        self._idle = threading.Event()  # set while no worker of ours runs
        self._idle.set()
        self.destroyed.connect(lambda *_, alive=self._alive, cancel=self._cancel, idle=self._idle:
                               _on_closed(alive, cancel, idle))
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
        self.viewer.dims.events.current_step.connect(self._on_plane_shown)  # a stack's planes have their own mark
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
        self.background_button.setToolTip("paint 'not this class' on the image being annotated: with a few "
                                          "instances painted, these strokes say where the class is not")
        self.complete = QCheckBox("every instance on this image is painted")
        self.complete.setToolTip("ticked: the rest of this image is 'not this class'; unticked (paint a few "
                                 "instances first): the rest is unknown, and 'not this class' is learned from "
                                 "background strokes, a thin band around each painted instance and what the "
                                 "model already knows for sure")
        self.complete.clicked.connect(self._mark_complete)
        self.teach_info = QLabel("Name a class, then paint its instances (one label per instance): a few of "
                                 "them (and some background), or all of them (then tick the box).", wordWrap=True)
        teach_box = box("Teach", row(self.class_name, self.class_kind), row(self.annotate_button,
                        self.background_button), self.complete, self.teach_info)

        self.learner = QComboBox(toolTip="how Learn learns the new classes: a dense step (a per-pixel head on "
                                 "the frozen features and a random forest on the pixels: any number of "
                                 "instances, boundaries at full resolution), ECLIPSE's prompt step as "
                                 "published (10 prompts through the frozen decoder) or with adaptive queries "
                                 "(up to 100 per image, started where a small scorer finds the classes)")
        for learner in LEARNERS:
            self.learner.addItem(LEARNER_NAMES[learner], learner)
        self.iterations = QSpinBox(minimum=10, maximum=20000, value=LearnConfig().iterations, singleStep=50)
        # Each learner starts from its own measured number of iterations.
        self.learner.currentIndexChanged.connect(
            lambda _: self.iterations.setValue(LearnConfig.for_learner(self.learner.currentData()).iterations))
        self.learn_button = button("Learn", self.learn)
        self.learn_button.setToolTip("learn every class painted since the last step, in one new step")
        self.refine_button = button("Refine", self.refine)
        self.refine_button.setToolTip("retrain the newest step on its classes' painting as it is now "
                                      "(paint more or correct first); Remove last step still undoes it whole")
        self.cancel_button = button("Cancel", self.cancel)
        self.progress = QProgressBar()
        self.progress_label = QLabel("", wordWrap=True)
        self.report = QLabel("", wordWrap=True)
        form = QFormLayout()
        form.addRow("Learner", self.learner)
        form.addRow("Iterations", self.iterations)
        learn_box = box("Learn", form, row(self.learn_button, self.refine_button, self.cancel_button), self.progress,
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
        for b in (self.predict_button, self.learn_button, self.refine_button, self.undo_button, self.export_button,
                  self.import_button, self.save_button, self.load_button):
            b.setEnabled(ready)
        self.load_button.setEnabled(ready or self.state == State.FAILED)  # the way out of a failed load
        self.annotate_button.setEnabled(self.state != State.LOADING)
        self.background_button.setEnabled(self.state != State.LOADING)
        self.cancel_button.setEnabled(self.state in (State.LEARNING, State.PREDICTING))
        if ready and self.session is not None:
            self.undo_button.setEnabled(self.session.model.num_steps > 0)
            self.refine_button.setEnabled(self.session.model.num_steps > 0)
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
        # Learn's pixel forest needs scikit-learn, about 2 s of imports: loaded while the user paints
        # instead of when the first Learn is pressed.
        from model.network.forest import import_scikit_learn

        threading.Thread(target=import_scikit_learn, name="eclipse-napari: scikit-learn", daemon=True).start()

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
            kind = "" if info.step == 0 else LEARNER_NAMES.get(info.learner, info.learner)
            kind += "" if info.dense else f"{', ' if kind else ''}δ={info.delta:g}"
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
        idle = self._idle

        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            finally:
                idle.set()

        idle.clear()
        worker = create_worker(run, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        worker.returned.connect(self._if_alive(on_done))
        worker.errored.connect(self._if_alive(self._on_error))
        worker.finished.connect(self._if_alive(lambda worker=worker: self._on_finished(worker)))
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

    def _on_finished(self, worker=None) -> None:
        if worker is not None and worker is not self._worker:
            return  # a worker whose result came before its end: a newer one runs already
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


def _on_closed(alive: list, cancel: threading.Event, idle: threading.Event, wait_seconds: float = 60.0) -> None:
    """The widget is going away (its window closed): drop every late result, stop the running Predict
    or Learn at its next tile, plane or iteration (a cancelled Learn removes its step), and wait for
    it, so nothing of ours still runs, or reports, once Qt tears the window down."""
    alive.clear()
    cancel.set()
    idle.wait(wait_seconds)
