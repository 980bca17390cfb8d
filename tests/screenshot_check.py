"""Run by test_napari_widget.py in its own process: shows the widget, predicts a sample scene, takes a
screenshot of the canvas and checks that it shows the predicted segments' colours (exit status 1 if not)."""

import sys
import time
from pathlib import Path

import numpy as np


def main(out: Path) -> int:
    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    from eclipse_napari.plugin.sample_data import sample_scene
    from eclipse_napari.plugin.widget import EclipseWidget, State

    def wait(condition, timeout=120.0):
        end = time.time() + timeout
        while not condition():
            QApplication.processEvents()
            time.sleep(0.02)
            if time.time() > end:
                raise TimeoutError("timed out")

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 1000)
    viewer.add_image(sample_scene(4)[0], name="scene 4")
    widget = EclipseWidget(viewer, project_folder=out / "project", threads=2)
    viewer.window.add_dock_widget(widget, name="ECLIPSE")
    wait(lambda: widget.state == State.READY)
    widget.predict("scene 4")
    wait(lambda: widget.state == State.READY and "scene 4 panoptic" in viewer.layers)
    viewer.layers["scene 4"].visible = False
    panoptic = viewer.layers["scene 4 panoptic"]
    panoptic.opacity = 1.0
    viewer.reset_view()  # fit the scene to the canvas left beside the docked widget
    shots = []

    def drawn():
        shots.append(viewer.screenshot(canvas_only=True, flash=False))
        return (shots[-1][..., :3].sum(-1) > 30).mean() > 0.15

    try:
        wait(drawn, timeout=20)
    except TimeoutError:
        print("coverage", [(s[..., :3].sum(-1) > 30).mean() for s in shots[-3:]], shots[-1].shape)
        imsave(out / "black.png", shots[-1], check_contrast=False)
        raise
    shot = shots[-1]
    imsave(out / "screenshot.png", shot, check_contrast=False)
    rgb = shot[..., :3].reshape(-1, 3).astype(int)
    expected = {tuple(int(round(255 * x)) for x in panoptic.colormap.map(np.array([i]))[0][:3])
                for i in panoptic.features["index"]}
    present = np.unique(rgb, axis=0)
    found = [c for c in expected if (np.abs(present - np.array(c)).sum(1) < 60).any()]
    print(f"{len(found)} of {len(expected)} segment colours on screen; "
          f"{100 * (rgb.sum(1) > 30).mean():.0f}% of the canvas covered")
    viewer.close()
    if len(found) < max(1, len(expected) // 2):
        print("FAILED: the predicted colours are not on screen")
        return 1
    print("colours on screen: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
