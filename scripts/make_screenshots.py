"""Screenshots for the README's guide: predict -> teach -> learn -> undo, made by driving the real widget.

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/make_screenshots.py [--out docs/images]

Paints the sample scenes' sand regions as a user would (from the generated ground truth), marks each scene as
painted completely, learns them with the widget's default settings, and saves one PNG of the whole window
per stage.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("docs/images"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    from eclipse_napari.plugin.sample_data import SAMPLE_NEW_CLASS, class_instances, make_sample_data
    from eclipse_napari.plugin.widget import EclipseWidget, State

    viewer = napari.Viewer(title="ECLIPSE")
    viewer.window.resize(1500, 1000)
    for data, kwargs, _ in make_sample_data():
        viewer.add_image(data, **kwargs)
    project = Path(tempfile.mkdtemp(prefix="eclipse-shots-"))
    widget = EclipseWidget(viewer, project_folder=project)
    viewer.window.add_dock_widget(widget, name="ECLIPSE", area="right")

    def wait(condition, timeout=600):
        end = time.time() + timeout
        while not condition():
            QApplication.processEvents()
            time.sleep(0.05)
            if time.time() > end:
                raise TimeoutError("the widget did not finish in time")
        for _ in range(20):
            QApplication.processEvents()
            time.sleep(0.02)

    def ready():
        return widget.state == State.READY and widget._worker is None

    def show_only(*names):
        for layer in viewer.layers:
            layer.visible = layer.name in names

    def shot(name):
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()  # toasts would cover the canvas (the widget shows the same messages)
        viewer.reset_view()  # fit the image beside the docked widget
        for _ in range(10):
            QApplication.processEvents()
            time.sleep(0.05)
        path = args.out / f"{name}.png"
        imsave(path, viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)
        print("wrote", path)

    wait(ready)
    widget.predict("scene 1")
    wait(ready)
    show_only("scene 1", "scene 1 panoptic")
    viewer.layers.selection.active = viewer.layers["scene 1 panoptic"]
    shot("1-predict")

    widget.class_name.setText(SAMPLE_NEW_CLASS)
    widget.class_kind.setCurrentText("stuff")
    for n in (1, 2, 3):
        widget.image_choice.setCurrentText(f"scene {n}")
        layer = widget.add_annotation_layer()
        layer.data = class_instances(n, SAMPLE_NEW_CLASS)
        widget.complete.click()  # all of the scene's sand is painted: the rest is "not sand"
    widget.flush_annotations()
    show_only("scene 1", f"{SAMPLE_NEW_CLASS} on scene 1")
    shot("2-teach")

    widget.learn()
    wait(lambda: widget.progress.value() >= widget.iterations.value() // 2)
    shot("3-learning")
    wait(lambda: ready() and widget.last_learn is not None)
    widget.predict("scene 4")
    wait(ready)
    show_only("scene 4", "scene 4 panoptic")
    shot("4-learned")

    widget.undo()
    wait(ready)
    widget.predict("scene 4")
    wait(ready)
    show_only("scene 4", "scene 4 panoptic")
    shot("5-undo")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
