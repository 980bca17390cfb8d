"""State that never goes stale: every prediction refreshes after a change of steps, the report goes with
an undo, the legend follows the layer selected, a failed model load keeps a way out, the newest step is
shown, new classes get colours of their own, messages name what was written, Threads applies to Predict."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from napari_helpers import needs_display, open_widget, predict, wait_ready

pytestmark = [needs_display, pytest.mark.slow]


def _added_step(widget, name="horse"):
    """An untrained dense step added to the widget's model (enough to change the predictions' classes)."""
    model = widget.session.model
    model.add_dense_step([name], [True])
    model.eval()
    widget._refresh_model()


def test_every_prediction_shown_refreshes_after_steps_change_and_undo_clears_the_report(
        make_napari_viewer, qtbot, tmp_path):
    viewer, widget = open_widget(make_napari_viewer, qtbot, tmp_path, scenes=(1, 2, 3))
    for name in ("scene 1", "scene 2", "scene 3"):
        predict(widget, qtbot, name)
    widget.image_choice.setCurrentText("scene 1")
    _added_step(widget)
    path = tmp_path / "step"
    assert widget.export_step(str(path))
    assert "step.safetensors" in widget.last_message  # the file actually written
    widget.report.setText("Learned horse …")
    for name in ("scene 1", "scene 2", "scene 3"):  # mark every prediction stale
        viewer.layers[f"{name} panoptic"].data = np.zeros((256, 256), np.int32)
    assert widget.undo()
    assert widget.report.text() == ""  # the report described the step just removed
    qtbot.waitUntil(lambda: all(viewer.layers[f"{n} panoptic"].data.any() for n in ("scene 1", "scene 2", "scene 3")),
                    timeout=120_000)
    wait_ready(widget, qtbot)
    assert widget.image_choice.currentText() == "scene 1"  # refreshing does not change the user's choice


def test_the_legend_follows_the_prediction_selected(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = open_widget(make_napari_viewer, qtbot, tmp_path, scenes=(1, 2))
    _, sem1 = predict(widget, qtbot, "scene 1")
    _, sem2 = predict(widget, qtbot, "scene 2")
    assert widget.legend.source == "scene 2"
    viewer.layers.selection.active = viewer.layers["scene 1 panoptic"]
    assert widget.legend.source == "scene 1"
    top = widget.legend.item(0, 1).text()  # the class with the most pixels comes first
    counts = np.bincount(sem1.data.ravel(), minlength=17)[1:]
    assert top == widget.session.classes[int(counts.argmax())].name


def test_a_failed_model_load_keeps_load_model_and_says_so_once(make_napari_viewer, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    from eclipse_napari.plugin.widget import EclipseWidget, State
    from eclipse_napari.resources import shipped_base_path

    viewer = make_napari_viewer()
    before = len(notification_manager.records)
    widget = EclipseWidget(viewer, model_folder=tmp_path / "no such model", project_folder=tmp_path / "p", threads=1)
    qtbot.waitUntil(lambda: widget.state == State.FAILED, timeout=60_000)
    qtbot.wait(200)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert len(messages) == 1, messages
    assert "could not load the model" in messages[0] and "Traceback" not in messages[0]
    assert widget.load_button.isEnabled() and not widget.predict_button.isEnabled()
    assert widget.load_model(str(shipped_base_path()))
    assert widget.state == State.READY and widget.predict_button.isEnabled()


def test_the_newest_step_is_shown_and_new_classes_get_distinct_colours(make_napari_viewer, qtbot, tmp_path):
    from model.network.classes import _distance

    _, widget = open_widget(make_napari_viewer, qtbot, tmp_path, scenes=(1,))
    for name in ("a1", "a2", "a3", "a4", "a5"):
        _added_step(widget, name)
    assert widget.steps.currentRow() == widget.steps.count() - 1 == 5
    classes = widget.session.classes
    for k, new in enumerate(classes[16:], start=16):
        assert min(_distance(new.color, old.color) for old in classes[:k]) > 60, (new, k)


def test_threads_apply_to_predict(make_napari_viewer, qtbot, tmp_path):
    _, widget = open_widget(make_napari_viewer, qtbot, tmp_path, scenes=(1,))
    seen, real = [], widget.session.predict

    def predict_and_record(*args, **kwargs):  # runs in the worker thread, where the setting applies
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    widget.session.predict = predict_and_record
    for threads in (1, 2):
        widget.threads.setValue(threads)
        predict(widget, qtbot, "scene 1")
    assert seen == [1, 2]


def test_learn_takes_every_class_painted_in_one_step_and_refine_retrains_it(make_napari_viewer, qtbot, tmp_path):
    from eclipse_napari.plugin.sample_data import class_instances

    viewer, widget = open_widget(make_napari_viewer, qtbot, tmp_path, scenes=(1, 2))
    base = {k: v.clone() for k, v in widget.session.model.state_dict().items()}
    widget.class_name.setText("sand")
    widget.class_kind.setCurrentText("stuff")
    widget.image_choice.setCurrentText("scene 1")
    widget.add_annotation_layer().data = class_instances(1, "sand")
    widget.class_name.setText("patch")
    widget.class_kind.setCurrentText("thing")
    patch = np.zeros((256, 256), np.int32)
    patch[10:40, 10:40], patch[200:230, 20:50] = 1, 2
    widget.add_annotation_layer().data = patch
    widget.flush_annotations()
    widget.iterations.setValue(20)
    widget.learn()
    wait_ready(widget, qtbot, timeout=300_000)
    model = widget.session.model
    assert widget.last_learn.state == "done", widget.last_message
    assert model.num_steps == 1 and [c.name for c in model.groups[-1].classes] == ["sand", "patch"]
    assert "sand, patch" in widget.report.text()
    assert "Painted images, outside the painted instances:" in widget.report.text()
    assert "Other open images (1, not painted)" in widget.report.text()
    learned = {k: v.clone() for k, v in model.state_dict().items()}

    widget.image_choice.setCurrentText("scene 2")  # paint more of the newest step's class, then Refine
    layer = widget.add_annotation_layer()
    assert layer is not None, widget.last_message
    layer.data = patch
    widget.flush_annotations()
    assert widget.refine_button.isEnabled()
    widget.refine()
    wait_ready(widget, qtbot, timeout=300_000)
    assert widget.last_learn.refined and model.num_steps == 1, widget.last_message
    assert "Refined" in widget.report.text()
    after = model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in learned.items())
    assert widget.undo()
    wait_ready(widget, qtbot)
    state = widget.session.model.state_dict()
    assert state.keys() == base.keys() and all(torch.equal(state[k], v) for k, v in base.items())


@pytest.mark.parametrize("learner,queries,shown,report", [
    ("prompts", 10, "prompts (ECLIPSE), δ=", "ECLIPSE prompt step"),
    ("adaptive", 100, "adaptive (ECLIPSE), δ=", "adaptive prompt step"),
])
def test_a_prompt_step_chosen_in_the_widget_trains_refines_exports_and_imports(
        make_napari_viewer, qtbot, tmp_path, learner, queries, shown, report):
    """The Learner control: ECLIPSE's prompt step (as published, or with adaptive queries) learns, is
    shown as such in the Steps list, Refine retrains it as that kind of step with its own iterations (not
    the dense spin box's), and it survives an export, undo and import."""
    from eclipse_napari.plugin.sample_data import class_instances
    from model.interactive.config import LearnConfig

    viewer, widget = open_widget(make_napari_viewer, qtbot, tmp_path, scenes=(1, 2))
    widget.class_name.setText("sand")
    widget.class_kind.setCurrentText("stuff")
    widget.image_choice.setCurrentText("scene 1")
    widget.add_annotation_layer().data = class_instances(1, "sand")
    widget.flush_annotations()
    assert widget.iterations.value() == LearnConfig().iterations
    widget.learner.setCurrentIndex(widget.learner.findData(learner))
    assert widget.iterations.value() == LearnConfig.for_learner(learner).iterations  # the learner's own default
    widget.iterations.setValue(8)
    widget.learn()
    wait_ready(widget, qtbot, timeout=300_000)
    model = widget.session.model
    assert widget.last_learn.state == "done", widget.last_message
    assert model.groups[-1].num_queries == queries and shown in widget.steps.item(1).text()
    assert report in widget.report.text()
    used = []
    refine = widget.session.refine
    # What Refine asks for is recorded; it then runs a few iterations (the test checks the request, and
    # a full refine of an adaptive step costs minutes on CPU).
    widget.session.refine = lambda classes, config, **kw: (used.append(config)
                                                           or refine(classes, replace(config, iterations=5), **kw))
    widget.learner.setCurrentIndex(widget.learner.findData("dense"))  # the step's own learner decides
    widget.refine()
    wait_ready(widget, qtbot, timeout=300_000)
    assert widget.last_learn.refined, widget.last_message
    assert used[0].learner == learner and used[0].iterations == LearnConfig.for_learner(learner).iterations
    learned = {k: v.clone() for k, v in model.state_dict().items()}
    assert widget.export_step(str(tmp_path / "sand"))
    assert widget.undo()
    wait_ready(widget, qtbot)
    assert widget.import_step(str(tmp_path / "sand.safetensors"))
    wait_ready(widget, qtbot)
    state = widget.session.model.state_dict()
    assert state.keys() == learned.keys() and all(torch.equal(state[k], v) for k, v in learned.items())
    assert shown in widget.steps.item(1).text()


def test_each_prediction_and_painting_lies_on_its_own_image_when_several_are_shown(
        make_napari_viewer, qtbot, tmp_path):
    """Two images side by side, the lower one in the list placed and scaled elsewhere: its prediction and
    its painting take its transform and sit right above it (not on top of the list, over the other)."""
    viewer, widget = open_widget(make_napari_viewer, qtbot, tmp_path, scenes=(1, 2))
    first = viewer.layers["scene 1"]
    first.translate, first.scale, first.rotate = (40, 300), (2, 2), 30
    panoptic, semantic = predict(widget, qtbot, "scene 1")
    predict(widget, qtbot, "scene 2")
    names = [layer.name for layer in viewer.layers]
    assert names.index("scene 1 panoptic") == names.index("scene 1") + 1 < names.index("scene 2")
    assert names.index("scene 1 semantic") == names.index("scene 1") + 2
    for layer in (panoptic, semantic):
        np.testing.assert_allclose(layer.affine.affine_matrix, first.affine.affine_matrix)
        np.testing.assert_allclose(layer.data_to_world((10, 20)), first.data_to_world((10, 20)))
    widget.class_name.setText("moon")
    widget.image_choice.setCurrentText("scene 1")
    painting = widget.add_annotation_layer()
    names = [layer.name for layer in viewer.layers]
    assert names.index(painting.name) == names.index("scene 1 semantic") + 1 < names.index("scene 2")
    np.testing.assert_allclose(painting.data_to_world((10, 20)), first.data_to_world((10, 20)))
    first.translate = (0, 0)  # the image moved: a new prediction follows it
    predict(widget, qtbot, "scene 1")
    np.testing.assert_allclose(panoptic.data_to_world((10, 20)), first.data_to_world((10, 20)))
