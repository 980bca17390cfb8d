"""The widget's state (it drives which buttons are enabled) and where projects go by default."""

import os
from enum import Enum
from pathlib import Path


class State(Enum):
    LOADING = "loading the model…"
    READY = "ready"
    PREDICTING = "predicting…"
    LEARNING = "learning…"
    FAILED = "no model"


def default_project_folder() -> Path:
    return Path(os.environ.get("ECLIPSE_NAPARI_PROJECT", Path.home() / "eclipse-napari" / "project"))
