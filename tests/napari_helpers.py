"""Shared set-up for the napari widget tests (they run under Xvfb via scripts/run_tests.sh)."""

import os

import pytest

needs_display = pytest.mark.skipif(
    not os.environ.get("DISPLAY"),
    reason="napari widget tests need an X display: run them through `bash scripts/run_tests.sh` (starts Xvfb)",
)


def open_widget(make_napari_viewer, qtbot, tmp_path, scenes=(1, 2, 3, 4), show=False, **kwargs):
    """A viewer with sample scenes and the docked widget, its model loaded."""
    from eclipse_napari.plugin.sample_data import sample_scene
    from eclipse_napari.plugin.widget import EclipseWidget, State

    viewer = make_napari_viewer(show=show)
    for n in scenes:
        viewer.add_image(sample_scene(n)[0], name=f"scene {n}")
    widget = EclipseWidget(viewer, project_folder=tmp_path / "project", threads=2, **kwargs)
    viewer.window.add_dock_widget(widget, name="ECLIPSE")
    qtbot.waitUntil(lambda: widget.state == State.READY, timeout=60_000)
    return viewer, widget


def wait_ready(widget, qtbot, timeout=120_000):
    from eclipse_napari.plugin.widget import State

    qtbot.waitUntil(lambda: widget.state == State.READY and widget._worker is None, timeout=timeout)


def predict(widget, qtbot, layer_name):
    widget.predict(layer_name)
    wait_ready(widget, qtbot)
    return widget.viewer.layers[f"{layer_name} panoptic"], widget.viewer.layers[f"{layer_name} semantic"]


def annotate(widget, layer_name, instances, complete=False):
    """Selects `layer_name`, adds the annotation layer for the class typed in the widget, and paints;
    `complete`: ticks "every instance on this image is painted" as a user would."""
    widget.image_choice.setCurrentText(layer_name)
    layer = widget.add_annotation_layer()
    layer.data = instances
    if complete and not widget.complete.isChecked():
        widget.complete.click()
        assert widget.complete.isChecked(), widget.last_message
    widget.flush_annotations()
    return layer
