"""What the napari widget drives, without Qt: the model and its steps, predictions, and Learn.

One `Session` owns one model. Every operation that reads or changes the model takes the session's lock
without waiting: a second Learn, or an Undo while Learn runs, gets a clear `BusyError` instead of
racing the training thread. After every change of steps the whole model is saved into the project
folder (`<project>/model`), so a crash loses no learned class.
"""

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.interactive.config import Example, LearnConfig, LearnResult, NewClass
from model.interactive.examples import image_digest
from model.interactive.frozen import FeatureStore
from model.interactive.learn import learn_classes, refine_last_step
from model.io.model_files import load_model, load_step, save_model, save_step
from model.network.eclipse import EclipseModel
from model.network.tiled import TileConfig, image_size
from model.training.progress import Progress, RunState

from ..resources import shipped_base_path


class BusyError(RuntimeError):
    """The model is in use by another operation (training, prediction)."""


@dataclass
class Prediction:
    """Panoptic prediction of one 2-D plane."""

    panoptic: np.ndarray  # int32 [H,W]: 0 = no segment, else a segment id (1..N)
    semantic: np.ndarray  # int32 [H,W]: 0 = no class, else the class id
    segments: list  # model.network.postprocess.Segment, in id order


@dataclass(frozen=True)
class PredictProgress:
    plane: int  # 1-based, of `planes`
    planes: int
    tile: int  # tiles of this plane done (1-based), of `tiles` (1 when predicted whole)
    tiles: int

    @property
    def fraction(self) -> float:
        return ((self.plane - 1) + self.tile / self.tiles) / self.planes


@dataclass(frozen=True)
class StepInfo:
    step: int  # 0 = the base model
    classes: tuple  # ClassSpec
    delta: float
    dense: bool = False  # a dense step (per-pixel head, no queries, no delta)
    learner: str = "base"  # how the step was learned: "dense", "prompts" or "adaptive" (LearnConfig.learner); the base: "base"


class Session:
    def __init__(self, model: EclipseModel, source: str = "", device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = device
        self.source = source  # where the model came from (shown to the user)
        self._lock = threading.Lock()
        # Results Learn made of the images it read, after its step (by image digest), and the model state
        # they belong to: the refresh after Learn takes them instead of predicting those images again.
        self._fresh: dict = {}
        self._fresh_state: tuple = ()
        # The frozen features of whole images predicted or learned from: steps never change them, so
        # Learn takes those of the images just predicted instead of encoding them again.
        self.features = FeatureStore()

    @classmethod
    def open(cls, model_folder: str | Path | None = None, device: str | None = None) -> "Session":
        """The model in `model_folder` (default: the shipped base model)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        folder = Path(model_folder) if model_folder is not None else shipped_base_path()
        return cls(load_model(folder, device), str(folder), device)

    # ----------------------------------------------------------------- reading
    @property
    def classes(self):
        return self.model.classes

    def steps(self) -> list[StepInfo]:
        return [StepInfo(t, tuple(g.classes), float(g.delta), t > 0 and g.num_queries == 0,
                         g.learner if t > 0 else "base")
                for t, g in enumerate(self.model.groups)]

    @contextmanager
    def _exclusive(self, what: str):
        if not self._lock.acquire(blocking=False):
            raise BusyError(f"cannot {what} now: the model is busy (training or predicting); wait or cancel")
        try:
            yield
        finally:
            self._lock.release()

    # ----------------------------------------------------------------- predicting
    def predict(self, planes: list[np.ndarray], cancel: Callable[[], bool] | None = None,
                progress: Callable[[PredictProgress], None] | None = None,
                tiles: TileConfig | None = TileConfig()) -> list[Prediction]:
        """Predictions for 2-D planes (grey [H,W] or RGB [H,W,3], values 0..255), large planes tile by
        tile (`tiles`; None = always whole); `progress` after every tile; stops within one tile when
        `cancel()` turns true (the planes finished so far are returned)."""
        with self._exclusive("predict"):
            out = []
            with torch.inference_mode():
                for n, plane in enumerate(planes):
                    report = None if progress is None else (
                        lambda done, total, n=n: progress(PredictProgress(n + 1, len(planes), done, total)))
                    result = self._fresh_result(plane, tiles)
                    if result is not None:
                        if report is not None:
                            report(1, 1)
                    else:
                        result = self.model.predict_image(plane, tiles, report, cancel,
                                                          encode=lambda p: self.features.encode(self.model, p))
                    if result is None:  # cancelled
                        break
                    panoptic = result.panoptic_seg.cpu().numpy().astype(np.int32)
                    out.append(Prediction(panoptic, result.semantic.cpu().numpy().astype(np.int32),
                                          list(result.segments)))
            return out

    def _model_state(self) -> tuple:
        """What identifies the model's current steps (every change of steps replaces a group or the model;
        Learn and Refine, which change weights in place, set the fresh results themselves; undo, import
        and loading a model also drop them outright, as a freed object's id may be reused)."""
        return (id(self.model), tuple(id(g) for g in self.model.groups))

    def _fresh_result(self, plane, tiles: TileConfig | None):
        """Learn's own result of this plane, if it read exactly these pixels, whole, and the steps have
        not changed since (taken once)."""
        if not self._fresh or self._fresh_state != self._model_state():
            self._fresh = {}
            return None
        height, width = image_size(plane)
        if tiles is not None and tiles.tiles_needed(height, width):
            return None
        return self._fresh.pop(image_digest(plane), None)

    # ----------------------------------------------------------------- changing steps
    def learn(self, name: str, is_thing: bool, examples: list[Example], config: LearnConfig | None = None, *,
              color=None, **kwargs) -> LearnResult:
        """Adds a step for one new class (see `learn_classes`)."""
        return self.learn_classes([NewClass(name, is_thing, list(examples), color)], config, **kwargs)

    def learn_classes(self, classes: list[NewClass], config: LearnConfig | None = None, **kwargs) -> LearnResult:
        """Adds one step for new classes; cancel or an error leaves the model exactly as it was.
        `context`: other images open (unpainted), where what the model already knows is not the class."""
        return self._train(learn_classes, classes, config, **kwargs)

    def refine(self, classes: list[NewClass], config: LearnConfig | None = None, **kwargs) -> LearnResult:
        """Retrains the newest step on its classes' painting (warm start); cancel or an error puts it back."""
        return self._train(refine_last_step, classes, config, **kwargs)

    def _train(self, how, classes, config, *, callback: Callable[[Progress], None] | None = None,
               cancel: Callable[[], bool] | None = None, save_to: Path | None = None,
               context: list[np.ndarray] = ()) -> LearnResult:
        with self._exclusive("learn"):
            start = time.perf_counter()
            self._fresh = {}
            result = how(self.model, classes, config or LearnConfig(), context=list(context), device=self.device,
                         callback=callback, cancel=cancel, features=self.features)
            self.model.eval()
            if result.state == RunState.DONE:
                self._fresh, self._fresh_state = result.predictions, self._model_state()
                result.predictions = {}  # held here until the refresh takes them
            if result.state == RunState.DONE and save_to is not None:
                self._save(save_to)
            result.seconds = time.perf_counter() - start
            return result

    def undo(self, save_to: Path | None = None) -> StepInfo:
        """Removes the newest step; returns what it held."""
        with self._exclusive("remove a step"):
            if self.model.num_steps == 0:
                raise ValueError("there is no learned step to remove: the model is the base model")
            removed = self.steps()[-1]
            self._fresh = {}
            self.model.remove_last_step()
            if save_to is not None:
                self._save(save_to)
            return removed

    def export_step(self, step: int, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        with self._exclusive("export a step"):
            save_step(self.model, step, path)
        return path

    def import_step(self, path: str | Path, save_to: Path | None = None) -> StepInfo:
        """Appends a step file; refused (CheckpointError, model unchanged) if it belongs to another base
        model, is out of order, clashes with a class name, or is damaged."""
        with self._exclusive("import a step"):
            self._fresh = {}
            load_step(self.model, path)
            self.model.eval()
            if save_to is not None:
                self._save(save_to)
            return self.steps()[-1]

    def save_model(self, folder: str | Path) -> Path:
        with self._exclusive("save the model"):
            return save_model(self.model, folder)

    def replace_model(self, folder: str | Path) -> None:
        """Loads another model folder; the current model stays if that fails."""
        with self._exclusive("load a model"):
            model = load_model(folder, self.device).eval()
            self.model, self.source, self._fresh = model, str(folder), {}
            self.features.clear()  # another model's frozen part

    def _save(self, folder: Path) -> None:
        save_model(self.model, folder)
