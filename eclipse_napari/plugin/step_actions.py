"""Steps: remove the last, export, import, save and load the model. A part of `EclipseWidget`."""

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from .state import State


class StepActions:
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
