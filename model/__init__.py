"""Headless ECLIPSE: continual panoptic segmentation by visual prompt tuning, in plain PyTorch.

The public API is named here; each name loads its module on first use, so importing one light part of
the package (file formats, configurations) never loads torch:

    from model import build_model, default_config, learn_class, load_model, save_model

Sub-packages, one concern each: `network` (the model), `training` (losses, matching, the training
loop), `evaluation` (PQ, mIoU, delta selection), `io` (files), `data` (datasets, scenarios,
augmentation), and the two applications on top, `benchmark` (the continual protocol) and
`interactive` (teaching a class from a few painted examples). This package never imports napari or Qt.
"""

import importlib

_EXPORTS = {
    # the network
    "EclipseModel": "model.network.eclipse",
    "ModelConfig": "model.network.config",
    "default_config": "model.network.config",
    "paper_config": "model.network.config",
    "tiny_config": "model.network.config",
    "build_model": "model.network.build",
    "ClassSpec": "model.network.classes",
    "PanopticResult": "model.network.postprocess",
    # files
    "load_model": "model.io.model_files",
    "save_model": "model.io.model_files",
    "load_step": "model.io.model_files",
    "save_step": "model.io.model_files",
    "CheckpointError": "model.io.tensor_files",
    # teaching a class
    "learn_class": "model.interactive.learn",
    "learn_classes": "model.interactive.learn",
    "refine_last_step": "model.interactive.learn",
    "NewClass": "model.interactive.config",
    "TileConfig": "model.network.tiled",
    "Example": "model.interactive.config",
    "LearnConfig": "model.interactive.config",
    "LearnResult": "model.interactive.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
