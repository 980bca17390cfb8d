"""Seconds from pressing Learn in the napari widget to refreshed predictions, as a user meets them.

    xvfb-run -a python benchmarks/widget_learn_time.py                 # one thread, as on 2 cores
    xvfb-run -a python benchmarks/widget_learn_time.py --threads 2 --learner prompts

napari opens with the widget and 7 generated scenes (tuning seed, 256x256); sand is painted completely
on 3 of them (each marked complete) and every scene's prediction is shown, so the other 4 are context
and all 7 predictions refresh after the step. The time runs from `learn()` to the moment the last
prediction shown has been refreshed and the widget is ready again. Writes results.json into --out.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learn_cases import SCENE_SEEDS  # noqa: E402

from model.interactive.config import LEARNERS  # noqa: E402

CLASS = "sand"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--learner", choices=LEARNERS, default="dense")
    p.add_argument("--out", type=Path, default=Path("runs/widget_learn_time"))
    args = p.parse_args(argv)
    import napari
    from qtpy.QtWidgets import QApplication

    from eclipse_napari.plugin.widget import EclipseWidget, State
    from model.io.atomic import atomic_write_json
    from model.data.scenes import SCENE_CLASSES, generate_scene

    class_id = next(i for i, c in enumerate(SCENE_CLASSES, start=1) if c.name == CLASS)
    seed = SCENE_SEEDS["tuning"][0]
    scenes, painted, index = [], 0, 0
    while len(scenes) < 7:
        image, ids, segments = generate_scene(index, seed=seed)
        mine = [s for s in segments if s["category_id"] == class_id]
        if painted < 3 and mine:
            scenes.append((image, np.isin(ids, [s["id"] for s in mine]).astype(np.int32)))
            painted += 1
        elif len(scenes) - painted < 4 and not mine:
            scenes.append((image, None))
        index += 1
    viewer = napari.Viewer(show=False)
    project = args.out / "project"
    if project.exists():
        import shutil

        shutil.rmtree(project)
    for k, (image, _) in enumerate(scenes):
        viewer.add_image(image, name=f"scene {k}")
    widget = EclipseWidget(viewer, project_folder=project, threads=args.threads)
    app = QApplication.instance()

    def wait(condition, timeout=600):
        end = time.perf_counter() + timeout
        while not condition():
            app.processEvents()
            time.sleep(0.005)
            if time.perf_counter() > end:
                raise TimeoutError("the widget did not finish in time")

    def ready():
        return widget.state == State.READY and widget._worker is None and not widget._repredict_queue

    wait(ready)
    for k in range(len(scenes)):
        widget.predict(f"scene {k}")
        wait(ready)
    widget.class_name.setText(CLASS)
    widget.class_kind.setCurrentText("stuff")
    for k, (_, mask) in enumerate(scenes):
        if mask is None:
            continue
        widget.image_choice.setCurrentText(f"scene {k}")
        layer = widget.add_annotation_layer()
        layer.data = mask
        widget.complete.click()
    widget.flush_annotations()
    widget.learner.setCurrentIndex(widget.learner.findData(args.learner))
    # The refresh starts from a timer after Learn's result arrives: wait for it to have started too.
    refreshing, refresh = [], widget._repredict
    widget._repredict = lambda: (refreshing.append(True), refresh())
    start = time.perf_counter()
    widget.learn()
    wait(lambda: widget.state == State.LEARNING)
    wait(lambda: ready() and widget.last_learn is not None and bool(refreshing))
    seconds = time.perf_counter() - start
    result = widget.last_learn
    if result.state != "done":
        raise SystemExit(f"Learn did not finish: {widget.last_message}")
    record = {"seconds": seconds, "learn_seconds": result.seconds, "threads": args.threads, "learner": args.learner,
              "painted": 3, "context": 4, "size": 256, "iterations": widget.iterations.value()}
    print(f"{args.learner}, {args.threads} thread(s): {seconds:.1f} s from Learn to the 7 refreshed predictions "
          f"(Learn itself {result.seconds:.1f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", record)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
