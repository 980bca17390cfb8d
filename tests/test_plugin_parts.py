"""The plugin's pieces that need no display: manifest, sample data, layer input, layer data, session."""

import filecmp
from pathlib import Path

import numpy as np
import pytest

from eclipse_napari.plugin import image_input as I
from eclipse_napari.plugin import layers as L

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_is_valid_and_its_commands_import():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    manifest.validate_imports()
    assert {c.id for c in manifest.contributions.commands} == {"eclipse-napari.widget", "eclipse-napari.sample"}
    # The packaged copy (what napari finds after pip install) is the repo-root manifest.
    assert filecmp.cmp(ROOT / "napari.yaml", ROOT / "eclipse_napari" / "napari.yaml", shallow=False)


def test_installed_plugin_is_discovered_by_npe2():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    manifest = pm.get_manifest("eclipse-napari")  # raises KeyError when the entry point is missing
    assert manifest.contributions.widgets[0].display_name == "ECLIPSE"


def test_sample_scenes_hold_known_and_new_classes():
    from eclipse_napari.plugin.sample_data import SAMPLE_NEW_CLASS, class_instances, make_sample_data, sample_scene
    from model.data.scenes import SCENE_CLASSES

    layers = make_sample_data()
    assert len(layers) == 4 and all(d.shape == (256, 256, 3) and d.dtype == np.uint8 for d, _, _ in layers)
    for n in range(1, 5):
        _, _, segments = sample_scene(n)
        ids = {s["category_id"] for s in segments}
        assert any(i <= 16 for i in ids) and any(i > 16 for i in ids)  # base classes are the first 16
        new = class_instances(n, SAMPLE_NEW_CLASS)
        assert new.max() >= 1 and (new > 0).sum() > 5000
    assert [c.name for c in SCENE_CLASSES].index(SAMPLE_NEW_CLASS) >= 16  # not a base class
    with pytest.raises(ValueError, match="numbered 1..4"):
        sample_scene(5)


def test_layer_planes_and_dtypes():
    stack = np.arange(2 * 3 * 20 * 30, dtype=np.uint16).reshape(2, 3, 20, 30)
    assert I.plane_indices(stack.shape, False, (1, 2)) == [(1, 2)]
    assert len(I.plane_indices(stack.shape, False, None)) == 6
    planes = I.planes_of(stack, False, None, contrast_limits=(0, 3599))
    assert planes[0][1].dtype == np.uint8 and planes[-1][1].max() == 255 and planes[0][1].min() == 0
    rgb = np.zeros((20, 30, 4), np.float32)
    rgb[..., 0] = 1.0
    out = I.to_model_plane(rgb, True, (0, 1))
    assert out.shape == (20, 30, 3) and out[..., 0].min() == 255 and out[..., 1].max() == 0
    with pytest.raises(I.LayerInputError, match="at least 16x16"):
        I.plane_indices((8, 8), False, None)
    with pytest.raises(I.LayerInputError, match="3 or 4 channels"):
        I.plane_indices((20, 30, 2), True, None)
    with pytest.raises(I.LayerInputError, match="outside"):
        I.plane_indices(stack.shape, False, (2, 0))
    mask = np.zeros((20, 20), bool)
    mask[:5] = True
    assert np.unique(I.to_model_plane(mask, False)).tolist() == [0, 255]  # the package's one rule
    with pytest.raises(I.LayerInputError, match="pixel type complex"):
        I.to_model_plane(np.zeros((20, 20), np.complex64), False)
    with pytest.raises(I.LayerInputError, match="not finite"):
        I.to_model_plane(np.zeros((20, 20), np.float32), False, (0, float("nan")))


def test_stacked_predictions_have_unique_ids_features_and_class_colours():
    from eclipse_napari.plugin.session import Prediction
    from model.network.classes import ClassSpec
    from model.network.postprocess import Segment

    classes = [ClassSpec("sky", False, (0, 0, 255)), ClassSpec("disc", True, (255, 0, 0))]
    pan = np.array([[1, 1, 2], [1, 3, 3]], np.int32)
    sem = np.array([[1, 1, 2], [1, 2, 2]], np.int32)
    segs = [Segment(1, 1, False, 0.9, 3), Segment(2, 2, True, 0.8, 1), Segment(3, 2, True, 0.7, 2)]
    pred = Prediction(pan, sem, segs)
    panoptic, semantic = L.stack_predictions([((0,), pred), ((2,), pred)], (3,), (2, 3), classes)
    assert panoptic["data"].shape == (3, 2, 3) and not panoptic["data"][1].any()
    assert np.array_equal(panoptic["data"][2], np.where(pan > 0, pan + 3, 0))
    assert panoptic["features"]["index"] == [1, 2, 3, 4, 5, 6]
    assert panoptic["features"]["class"] == ["sky", "disc", "disc"] * 2
    assert panoptic["colors"][1] == (0.0, 0.0, 1.0, 1.0)  # stuff: the class colour
    assert panoptic["colors"][2] != panoptic["colors"][3]  # two instances of one class stay apart
    assert semantic["features"]["class"] == ["(none)", "sky", "disc"]
    assert np.array_equal(semantic["data"][0], sem)
    assert L.class_pixel_counts(sem, 2).tolist() == [0, 3, 3]
    assert L.plane_key("stack", (1, 2)) == "stack[1,2]" and L.plane_key("scene", ()) == "scene"


def test_session_refuses_concurrent_use_and_undo_of_the_base(tmp_path):
    from eclipse_napari.plugin.session import BusyError, Session

    session = Session.open()
    assert [s.step for s in session.steps()] == [0]
    with pytest.raises(ValueError, match="no learned step"):
        session.undo()
    with session._exclusive("test"), pytest.raises(BusyError, match="busy"):
        session.predict([np.zeros((32, 32), np.uint8)])
    out = session.predict([np.zeros((32, 32, 3), np.uint8)])
    assert out[0].panoptic.shape == (32, 32)


def test_widget_module_does_not_import_torch():
    """torch costs seconds to import: the widget appears first and loads the model in a worker."""
    import subprocess
    import sys

    code = ("import sys, eclipse_napari.plugin.widget, eclipse_napari.plugin.sample_data, model; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_learns_forest_library_is_imported_before_the_first_learn():
    """The widget imports scikit-learn in the background once the model is loaded
    (`import_scikit_learn`): opening the session must not load it (that would delay the model), and
    fitting and using a pixel forest afterwards must import nothing of it that the warm-up missed."""
    import subprocess
    import sys

    code = "\n".join([
        "import sys",
        "import numpy as np, torch",
        "from eclipse_napari.plugin.session import Session",
        "from model.network.forest import TreeEnsemble, import_scikit_learn",
        "from model.training.pixel_stage import PixelFitConfig, _forest",
        "assert not [m for m in sys.modules if m.startswith('sklearn')], 'the session loads scikit-learn'",
        "import_scikit_learn()",
        "before = set(sys.modules)",
        "rng = np.random.default_rng(0)",
        "x = rng.normal(size=(200, 4)).astype(np.float32)",
        "y = (x[:, 0] > 0).astype(np.int64)",
        "forest = TreeEnsemble(0, 0, 2, 0)",
        "forest.set_trees(_forest(PixelFitConfig(), 3, 1, 0).fit(x, y), 2)",
        "p = forest(torch.from_numpy(x))",
        "assert p.shape == (200, 2)",
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('sklearn')))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"Learn imported scikit-learn modules the warm-up did not: {out.stdout[:600]}"


def test_the_learn_report_says_when_old_classes_were_lost():
    """The widget's report after Learn must be able to say something bad, in figures the user reads."""
    from eclipse_napari.plugin.teach_actions import _report
    from model.interactive.config import LearnResult, OtherImages, PaintedImages

    good = LearnResult("done", 17, None, 3.0, [], PaintedImages(3, 0.995, 0.004), others=OtherImages(4, 0.99, 0.01))
    bad = LearnResult("done", 17, None, 3.0, [], PaintedImages(3, 0.412, 0.55), others=OtherImages(4, 0.63, 0.35))
    assert "99.5% of the pixels kept" in _report(good) and "99.0% of the pixels an old class" in _report(good)
    text = _report(bad)
    assert "41.2% of the pixels kept their label; the new class took 55.0%" in text
    assert "63.0% of the pixels an old class held still hold it; the new class took 35.0%" in text
    two = LearnResult("done", 17, None, 3.0, [], PaintedImages(3, 0.9, 0.1), class_ids=[17, 18])
    assert "the new classes took 10.0%" in _report(two)


def test_the_learn_report_says_what_the_pixel_forest_weighs_and_when_it_was_dropped():
    from types import SimpleNamespace

    from eclipse_napari.plugin.teach_actions import _how

    def result(delta=None, share=(), learner="dense"):
        return SimpleNamespace(delta=delta, forest_share=list(share), learner=learner)

    assert _how(result(0.5, learner="prompts"), ["cell"]) == "an ECLIPSE prompt step, δ = 0.5"
    assert _how(result(0.5, learner="adaptive"), ["cell"]).startswith("an adaptive prompt step")
    assert _how(result(), ["cell"]) == "a dense step"
    assert "dropped" in _how(result(share=[0.0, 0.0]), ["nucleus", "gland"])
    assert _how(result(share=[0.75, 0.0]), ["nucleus", "gland"]).endswith("nucleus 75%, gland 0%")


def test_the_refresh_after_learn_takes_learns_own_results_of_the_images_it_read():
    """Learn predicts the painted and context images after its step anyway (thresholds, reports); the
    refresh that follows takes those results instead of predicting again, once, and only while the steps
    are as Learn left them: the same as a fresh prediction."""
    import torch

    from eclipse_napari.plugin.session import Session
    from model.interactive.config import Example, LearnConfig, NewClass
    from model.network.build import build_model
    from model.network.config import tiny_config

    torch.manual_seed(0)
    session = Session(build_model(tiny_config(), ["road", "car"], [False, True]))
    rng = np.random.default_rng(0)
    image, context, other = (rng.integers(0, 80, (64, 64, 3)).astype(np.uint8) for _ in range(3))
    instances = np.zeros((64, 64), np.int32)
    instances[8:24, 8:24], instances[36:52, 30:50] = 1, 2
    image[instances > 0] = (250, 200, 40)
    config = LearnConfig(iterations=4, augment_variants=1, dense_forest_trees=8)
    session.learn_classes([NewClass("blob", True, [Example(image, instances, complete=True)])], config,
                          context=[context])
    model, computed = session.model, []
    real = model.predict_image
    model.predict_image = lambda plane, *a, **k: (computed.append(plane), real(plane, *a, **k))[1]
    first = session.predict([context, image, other])
    assert len(computed) == 1 and computed[0] is other  # the two images Learn read are not predicted again
    again = session.predict([context, image])
    assert len(computed) == 3  # taken once
    for a, b in zip(first, again):
        assert np.array_equal(a.panoptic, b.panoptic) and np.array_equal(a.semantic, b.semantic)
        assert a.segments == b.segments
    session.learn_classes([NewClass("spot", True, [Example(image, instances, complete=True)])], config)
    session.undo()  # the steps changed since that Learn: its results are not taken
    session.predict([image])
    assert len(computed) == 4


@pytest.mark.exact
def test_learn_takes_the_frozen_features_of_the_images_just_predicted(tmp_path):
    """The session keeps the frozen features of whole images it predicted (steps never change them):
    Learn takes them instead of encoding those images again, and learns exactly the step it learns
    without them; predictions through the kept features are those of `predict_image`. Exact on any
    kernels: both paths run the same operations on the same shapes."""
    import copy

    import torch

    from eclipse_napari.plugin.session import Session
    from model.interactive.config import Example, LearnConfig, NewClass
    from model.interactive.learn import learn_classes
    from model.network.build import build_model
    from model.network.config import tiny_config

    torch.manual_seed(0)
    base = build_model(tiny_config(), ["road", "car"], [False, True]).eval()
    alone = copy.deepcopy(base)
    session = Session(base)
    rng = np.random.default_rng(1)
    image, context = (rng.integers(0, 80, (64, 64, 3)).astype(np.uint8) for _ in range(2))
    instances = np.zeros((64, 64), np.int32)
    instances[8:24, 8:24], instances[36:52, 30:50] = 1, 2
    image[instances > 0] = (250, 200, 40)
    predicted = session.predict([image, context])
    for plane, p in zip([image, context], predicted):
        direct = alone.predict_image(plane)
        assert np.array_equal(p.panoptic, direct.panoptic_seg.numpy()) and list(p.segments) == list(direct.segments)
    assert len(session.features) == 2

    encoded, real = [], base.encode_images
    base.encode_images = lambda *a, **k: (encoded.append(1), real(*a, **k))[1]
    classes = [NewClass("blob", True, [Example(image, instances, complete=True)])]
    config = LearnConfig(iterations=4, augment_variants=1, dense_forest_trees=8)
    session.learn_classes(classes, config, context=[context])
    assert encoded == []  # both images' features were kept from the prediction
    learn_classes(alone, classes, config, context=[context])
    mine, theirs = session.model.groups[-1].state_dict(), alone.groups[-1].state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    after = session.predict([image])[0]
    assert np.array_equal(after.panoptic, alone.predict_image(image).panoptic_seg.numpy())

    session.save_model(tmp_path / "model")
    session.replace_model(tmp_path / "model")
    assert len(session.features) == 0  # another model's frozen part is not kept
