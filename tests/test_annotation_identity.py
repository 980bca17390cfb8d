"""Annotations are keyed by the pixels they were painted on, not by layer names: they follow renames,
survive the image layer's deletion, never come back onto another picture of the same name, and never
replace a stored image with another."""

import numpy as np
import pytest
from napari_helpers import needs_display, open_widget

from eclipse_napari.plugin import annotations
from eclipse_napari.plugin.project import Project

pytestmark = needs_display

CLASS = "blob"


def _picture(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((64, 72, 3)) * 255).astype(np.uint8)


def _blobs(*boxes) -> np.ndarray:
    out = np.zeros((64, 72), np.int32)
    for k, (y, x) in enumerate(boxes, start=1):
        out[y : y + 8, x : x + 8] = k
    return out


def _widget(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = open_widget(make_napari_viewer, qtbot, tmp_path, scenes=())
    widget.class_name.setText(CLASS)
    return viewer, widget


def _annotate(widget, image_name: str, instances) -> object:
    widget.image_choice.setCurrentText(image_name)
    layer = widget.add_annotation_layer()
    layer.data = instances
    widget.flush_annotations()
    return layer


def _stored(project: Project) -> dict:
    return {a.image_key: a for a in project.annotations() if a.class_name == CLASS}


def test_painting_after_a_rename_is_saved_and_the_layers_follow(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = _widget(make_napari_viewer, qtbot, tmp_path)
    image = viewer.add_image(_picture(1), name="cells")
    layer = _annotate(widget, "cells", _blobs((4, 4)))
    image.name = "cells renamed"
    assert layer.name == f"{CLASS} on cells renamed"  # the annotation layer follows
    assert widget.image_choice.currentText() == "cells renamed"  # so does the chooser
    layer.data = _blobs((4, 4), (30, 30))  # painting after the rename
    widget.flush_annotations()
    (stored,) = _stored(widget.project).values()
    assert np.array_equal(stored.instances, _blobs((4, 4), (30, 30)))
    assert stored.image_name == "cells renamed"


def test_painting_after_the_image_layer_was_deleted_is_saved(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = _widget(make_napari_viewer, qtbot, tmp_path)
    viewer.add_image(_picture(2), name="photo")
    layer = _annotate(widget, "photo", _blobs((4, 4)))
    viewer.layers.remove("photo")
    layer.data = _blobs((4, 4), (40, 50))
    widget.flush_annotations()
    (stored,) = _stored(widget.project).values()
    assert np.array_equal(stored.instances, _blobs((4, 4), (40, 50)))
    assert np.array_equal(stored.image, _picture(2))


def test_another_picture_under_the_same_name_gets_nothing_and_overwrites_nothing(make_napari_viewer, qtbot,
                                                                                   tmp_path):
    viewer, widget = _widget(make_napari_viewer, qtbot, tmp_path)
    viewer.add_image(_picture(3), name="sample")
    _annotate(widget, "sample", _blobs((4, 4)))
    viewer.layers.remove(f"{CLASS} on sample")
    viewer.layers.remove("sample")
    viewer.add_image(_picture(4), name="sample")  # another picture, same layer name
    widget.image_choice.setCurrentText("sample")
    layer = widget.add_annotation_layer()
    assert not layer.data.any()  # the old masks are not restored onto other pixels
    assert "pixels differ" in widget.last_message and "not restored" in widget.last_message
    widget.class_name.setText("other class")  # painting another class on the new picture
    _annotate(widget, "sample", _blobs((20, 20)))
    project = widget.project
    first = [a for a in project.annotations() if a.class_name == CLASS]
    second = [a for a in project.annotations() if a.class_name == "other class"]
    assert len(first) == 1 and np.array_equal(first[0].image, _picture(3))  # the stored image is intact
    assert len(second) == 1 and np.array_equal(second[0].image, _picture(4))
    assert first[0].image_key != second[0].image_key


def test_the_same_picture_under_another_name_gets_its_masks_back(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = _widget(make_napari_viewer, qtbot, tmp_path)
    viewer.add_image(_picture(5), name="day 1")
    _annotate(widget, "day 1", _blobs((10, 10)))
    viewer.layers.remove(f"{CLASS} on day 1")
    viewer.layers.remove("day 1")
    viewer.add_image(_picture(5), name="reopened")
    widget.image_choice.setCurrentText("reopened")
    assert np.array_equal(widget.add_annotation_layer().data, _blobs((10, 10)))


def test_a_project_keyed_by_layer_name_is_taken_over_where_the_pixels_match(tmp_path):
    """Projects written before were keyed by layer name: matching pixels are re-keyed by identity and
    restored; other pixels under that name are refused."""
    napari_layers = pytest.importorskip("napari.layers")
    project = Project(tmp_path / "p")
    project.ensure_category(CLASS, True)
    project.save_annotation("old name", _picture(6), _blobs((2, 2)), CLASS)
    for pixels, expect in ((_picture(7), False), (_picture(6), True)):
        image = napari_layers.Image(pixels, name="old name", rgb=True)
        data, kwargs = annotations.new_layer_args(image, CLASS, True)
        layer = napari_layers.Labels(data, **kwargs)
        restored = annotations.restore(layer, image, project, {}, {})
        assert (restored.planes == 1) == expect and bool(restored.refused) == (not expect)
        assert layer.data.any() == expect
    assert list(_stored(project)) == [annotations.plane_identity(_picture(6))]


def test_background_painted_with_the_instance_layer_closed_keeps_the_instances(make_napari_viewer, qtbot, tmp_path):
    """The instance layer closed, then background painted on the same image: the stored instances and
    the 'every instance painted' mark stay as they were (the background layer alone says nothing
    about them)."""
    viewer, widget = _widget(make_napari_viewer, qtbot, tmp_path)
    viewer.add_image(_picture(8), name="cells")
    layer = _annotate(widget, "cells", _blobs((4, 4), (30, 30)))
    widget.complete.click()
    widget.flush_annotations()
    viewer.layers.remove(layer)
    widget.image_choice.setCurrentText("cells")
    background = widget.add_background_layer()
    strokes = np.zeros((64, 72), np.int32)
    strokes[50:52] = 1
    background.data = strokes
    widget.flush_annotations()
    (stored,) = _stored(widget.project).values()
    assert np.array_equal(stored.instances, _blobs((4, 4), (30, 30))) and stored.complete
    assert stored.background is not None and stored.background[50:52].all()
