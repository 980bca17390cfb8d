"""A dense step's pixel stage: the forest kept as tensors predicts what scikit-learn's does, an unfitted
stage changes nothing, a fitted one travels in the step file, and Refine puts a refit forest back."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from model import load_step, save_step
from model.network.build import build_model
from model.network.config import tiny_config
from model.network.eclipse import to_chw_tensor
from model.network.forest import TreeEnsemble
from model.training.pixel_stage import PixelFitConfig, fit_pixel_stage

sklearn = pytest.importorskip("sklearn.ensemble")


def test_the_forest_as_tensors_predicts_exactly_what_scikit_learn_predicts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 12)).astype(np.float32)
    y = np.where(x[:, 0] + x[:, 1] ** 2 > 1, 3, 0) + (x[:, 2] > 1.2)  # labels 0, 1, 3, 4: 2 never occurs
    forest = sklearn.RandomForestClassifier(20, max_depth=12, random_state=0, class_weight="balanced").fit(x, y)
    trees = TreeEnsemble(classes=5)
    trees.set_trees(forest, 5)
    # The training pixels lie on both sides of every threshold (the midpoints between their values).
    for data in (x, rng.normal(size=(2000, 12)).astype(np.float32)):
        theirs = forest.predict_proba(data)
        # On the CPU scikit-learn's tree code walks the tables; `walk` is the torch walk (other devices).
        for ours in (trees(torch.from_numpy(data)).numpy(), trees.walk(torch.from_numpy(data)).numpy()):
            assert np.allclose(ours[:, forest.classes_], theirs, atol=1e-6, rtol=0)
            assert (ours[:, 2] == 0).all()
            assert np.array_equal(ours.argmax(1), forest.classes_[theirs.argmax(1)])
    assert trees._sklearn_trees() is not None
    with pytest.raises(ValueError, match="reads 12 features"):
        trees(torch.zeros(3, 5))
    threads = torch.get_num_threads()
    try:  # the same floats whatever the number of threads
        torch.set_num_threads(1)
        one = trees(torch.from_numpy(x))
        torch.set_num_threads(2)
        assert torch.equal(one, trees(torch.from_numpy(x)))
    finally:
        torch.set_num_threads(threads)
    with torch.inference_mode():  # a forest loaded, and used, where tensors keep no version counter
        loaded = TreeEnsemble(classes=5)
        loaded.load_state_dict(trees.state_dict())
        assert torch.equal(loaded(torch.from_numpy(x)), trees(torch.from_numpy(x)))
        assert loaded._sklearn_trees() is loaded._sklearn_trees()  # built once
    with pytest.raises(ValueError, match="not been fitted"):
        TreeEnsemble()(torch.zeros(3, 12))


def _model():
    torch.manual_seed(0)
    m = build_model(tiny_config(), ["road", "car"], [False, True]).eval()
    m.add_dense_step(["cell", "medium"], [True, False], pixel=True)
    with torch.no_grad():  # a head that says something
        for p in m.groups[-1].head.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m.eval()


def _entries(model, image, labels):
    inputs = model.encode_images(to_chw_tensor(image)[None]).dense
    return [(inputs, torch.from_numpy(labels))]


def _painting(seed=0, slip=False):
    """Bright squares are cells, a blue band is the medium; large enough that both folds of the
    cross-fitting's 64-pixel checkerboard hold cells, medium and background. `slip`: a patch of plain
    background painted as a cell too, by mistake (inside one square of the checkerboard)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (128, 192, 3)).astype(np.uint8)
    labels = np.zeros((128, 192), np.int64)
    for y, x in ((10, 10), (80, 140), (20, 90), (90, 30)):
        image[y : y + 20, x : x + 20] += 150
        labels[y : y + 20, x : x + 20] = 1
    image[:, 170:, 2] = 250
    labels[:, 170:] = 2
    labels[:5] = -1  # unknown pixels
    if slip:
        labels[100:112, 70:82] = 1
    return image, labels


def test_a_forest_whose_tables_are_not_plain_trees_is_walked_by_torch_or_refused():
    """A branch that points back, or a tree deeper than the recorded depth (a damaged or hand-made
    table), would send a compiled walk round a loop or past the depth `walk` stops at: such tables are
    walked by torch; and a step file holding them is refused (`check`, which loading runs)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    forest = sklearn.RandomForestClassifier(3, max_depth=4, random_state=0).fit(x, x[:, 0] > 0)
    trees = TreeEnsemble(classes=2)
    trees.set_trees(forest, 2)
    trees.check(4)
    assert trees._sklearn_trees() is not None
    expected = trees(torch.from_numpy(x))
    assert torch.allclose(expected, trees.walk(torch.from_numpy(x)), atol=1e-6, rtol=0)

    shallow = TreeEnsemble(classes=2)
    shallow.load_state_dict(trees.state_dict())
    shallow.depth.fill_(int(trees.depth) - 1)  # deeper than it says
    assert shallow._sklearn_trees() is None
    assert torch.equal(shallow(torch.from_numpy(x)), shallow.walk(torch.from_numpy(x)))
    with pytest.raises(ValueError, match="deeper than its recorded depth"):
        shallow.check(4)

    branches = trees.branches.clone()
    inner = int(torch.nonzero(branches[:, 0] != torch.arange(len(branches))).flatten()[1])
    branches[inner, 0] = 0  # an inner node's left child is the root
    trees.branches.copy_(branches)
    assert trees._sklearn_trees() is None  # the change in place is seen
    out = trees(torch.from_numpy(x))
    assert torch.equal(out, trees.walk(torch.from_numpy(x)))
    with pytest.raises(ValueError, match="deeper"):
        trees.check(4)


def test_an_unfitted_stage_changes_nothing_and_a_fitted_one_travels_in_the_step_file(tmp_path):
    model = _model()
    head = model.groups[-1].head
    image, labels = _painting(slip=True)
    inputs = _entries(model, image, labels)[0][0]
    with torch.no_grad():
        assert torch.equal(head(inputs), head.forward_both(inputs)[0])
    assert head.layout()["pixel"] is True
    (honest,) = fit_pixel_stage(head, _entries(model, image, labels), PixelFitConfig(trees=8), honest=1)
    with torch.no_grad():
        fitted = head(inputs)
        probs = fitted[0, :2].sigmoid()
    # The cross-fitted logits judge each pixel by the half of the trees that did not see its square: the
    # patch painted by mistake is a cell to the kept forest (half of whose trees learned it), much less so
    # to the cross-fitted logits.
    assert honest.shape == fitted.shape and not torch.equal(honest, fitted)
    slip = (slice(102, 110), slice(72, 80))
    assert honest[0, 0][slip].mean() < fitted[0, 0][slip].mean() - 1
    assert not torch.equal(fitted, head.forward_both(inputs)[0])
    assert torch.equal(fitted[:, 2:], head.forward_both(inputs)[0][:, 2:])  # distances pass unchanged
    # The forest learned the painting: the cells' pixels lean to "cell", the band's to "medium".
    assert probs[0, 15:25, 15:25].mean() > 0.5 > probs[0, 50:60, 60:80].mean()
    assert probs[1, 20:100, 174:190].mean() > 0.5
    assert head.pixel_stage.blend.tolist() != [0.0, 0.0]
    layout = head.layout()["pixel"]
    assert layout["trees"] == 8 and layout["classes"] == 3
    assert layout["nodes"] == head.pixel_stage.forest.feature.numel()

    before = model.predict(image)
    save_step(model, 1, tmp_path / "step.safetensors")
    model.remove_last_step()
    loaded = load_step(model, tmp_path / "step.safetensors")
    assert loaded.head.layout() == head.layout()
    after = model.predict(image)
    assert torch.equal(before.panoptic_seg, after.panoptic_seg) and before.segments == after.segments

    # A damaged forest (a branch out of range, in a file whose checksum holds: written so by a faulty
    # program) is refused on load with a clear message.
    from model.io.model_files import CheckpointError
    from model.io.tensor_files import load_tensor_file, save_tensor_file

    tensors, metadata = load_tensor_file(tmp_path / "step.safetensors")
    tensors["head.pixel_stage.forest.branches"][0, 0] = 10**6
    save_tensor_file(tmp_path / "damaged.safetensors", tensors, "eclipse-step", metadata)
    model.remove_last_step()
    with pytest.raises(CheckpointError, match="pixel forest is damaged"):
        load_step(model, tmp_path / "damaged.safetensors")


def _record_pixel_fits(monkeypatch) -> list:
    """The PixelFitConfig of every pixel-stage fit Learn makes from now on (the fits still run)."""
    from model.interactive import learn as learn_module

    seen, fit = [], learn_module.fit_pixel_stage

    def recording(head, entries, config, **kwargs):
        seen.append(config)
        return fit(head, entries, config, **kwargs)

    monkeypatch.setattr(learn_module, "fit_pixel_stage", recording)
    return seen


def test_the_forest_is_fitted_on_at_most_the_configured_pixels_of_each_kind_and_never_on_unknown_ones(monkeypatch):
    from model.interactive import learn as learn_module
    from model.interactive.config import Example, LearnConfig, NewClass
    from model.training.pixel_stage import pixel_table

    model = _model()
    head = model.groups[-1].head
    image, labels = _painting()
    labels[:, :40] = -1  # unknown: what was not painted
    counts = {v: int((labels == v).sum()) for v in (0, 1, 2)}
    entries = _entries(model, image, labels)
    _, taken, _, _ = pixel_table(head, entries, PixelFitConfig(positives=100, negatives=300))
    assert {v: int((taken == v).sum()) for v in (-1, 0, 1, 2)} == {-1: 0, 0: 300, 1: 100, 2: 100}
    _, taken, _, _ = pixel_table(head, entries, PixelFitConfig(positives=10**6, negatives=10**6))
    assert {v: int((taken == v).sum()) for v in (-1, 0, 1, 2)} == {-1: 0, **counts}

    # Learn passes its settings on.
    seen = _record_pixel_fits(monkeypatch)
    torch.manual_seed(0)
    base = build_model(tiny_config(), ["road", "car"], [False, True]).eval()
    cells = ndimage.label(labels == 1)[0].astype(np.int32)
    config = LearnConfig(iterations=2, dense_forest_trees=4, dense_forest_positives=50, dense_forest_negatives=70,
                         dense_forest_boundary=0.25)
    learn_module.learn_classes(base, [NewClass("cell", True, [Example(image, cells, complete=True)])], config)
    assert [(c.positives, c.negatives, c.trees, c.boundary_share) for c in seen] == [(50, 70, 4, 0.25)]
    with pytest.raises(ValueError, match="share of the sample"):
        LearnConfig(dense_forest_boundary=1.5)


def test_a_boundary_share_draws_that_share_of_each_sample_near_another_known_label():
    from model.training.pixel_stage import sample_known

    labels = np.zeros((120, 120), np.int64)
    yy, xx = np.mgrid[:120, :120]
    labels[(yy - 60) ** 2 + (xx - 60) ** 2 < 30 ** 2] = 1  # a disc of 2,821 pixels on background
    labels[:, 100:] = -1  # unknown: its edge with the background is no boundary
    near = ndimage.binary_dilation(labels == 1, np.ones((7, 7), bool)) & (labels == 0)
    near |= ndimage.binary_dilation(labels == 0, np.ones((7, 7), bool)) & (labels == 1)
    for share in (0.0, 0.5, 0.8):
        config = PixelFitConfig(positives=400, negatives=600, boundary_share=share)
        (background, bg_uniform), (disc, disc_uniform) = sample_known(labels, config, np.random.default_rng(0))
        assert (len(background), len(disc)) == (600, 400)
        assert len(np.unique(disc)) == 400 and (labels.reshape(-1)[disc] == 1).all()
        assert (labels.reshape(-1)[background] == 0).all()
        for taken, uniform, total, limit in ((disc, disc_uniform, labels == 1, 400),
                                            (background, bg_uniform, labels == 0, 600)):
            at_edge = near.reshape(-1)[taken].mean()
            by_area = (near & total).sum() / total.sum()  # what a uniform draw gives
            # the share drawn at the edge, marked as not uniform; the uniform rest lands there by its area
            assert uniform.sum() == limit - round(share * limit)
            assert near.reshape(-1)[taken[~uniform]].all()
            assert at_edge >= share
            assert abs(near.reshape(-1)[taken[uniform]].mean() - by_area) < 0.1
            if share > 0:
                assert at_edge > by_area + 0.2
    # Without a boundary share the sample is drawn as before it existed.
    old = PixelFitConfig(positives=400, negatives=600)
    rng = np.random.default_rng(0)
    assert all(np.array_equal(a, np.sort(rng.choice(np.flatnonzero(labels.reshape(-1) == v), n, replace=False)))
               and u.all() for (a, u), v, n in zip(sample_known(labels, old, np.random.default_rng(0)), (0, 1), (600, 400)))


def test_the_forests_share_is_judged_on_the_uniformly_drawn_pixels_only(monkeypatch):
    """Pixels drawn for lying near a boundary, where a stride-4 head is weakest, would tilt the share
    towards the forest: the share is chosen on the uniform draw, which stands for the painting."""
    from model.training import pixel_stage
    from model.training.pixel_stage import pixel_table

    model = _model()
    head = model.groups[-1].head
    image, labels = _painting()
    entries = _entries(model, image, labels)
    config = PixelFitConfig(trees=8, positives=300, negatives=500, boundary_share=0.6)
    _, taken, _, uniform = pixel_table(head, entries, config)
    assert 0 < (~uniform).sum() < len(uniform)
    judged = []
    real = pixel_stage.blend_weights
    monkeypatch.setattr(pixel_stage, "blend_weights", lambda f, h, y: judged.append(y.copy()) or real(f, h, y))
    fit_pixel_stage(head, entries, config)
    assert len(judged) == 1 and np.array_equal(np.sort(judged[0]), np.sort(taken[uniform]))


def test_learn_sets_a_stuff_class_share_and_leaves_a_things_to_be_chosen(monkeypatch):
    from model.interactive import learn as learn_module
    from model.interactive.config import Example, LearnConfig, NewClass

    seen = _record_pixel_fits(monkeypatch)
    torch.manual_seed(0)
    image, labels = _painting()
    cells = ndimage.label(labels == 1)[0].astype(np.int32)
    medium = np.where(labels == 2, 1, 0).astype(np.int32)
    both = [NewClass("cell", True, [Example(image, cells, complete=True)]),
            NewClass("medium", False, [Example(image, medium, complete=True)])]
    for stuff_share in (1.0, None):
        seen.clear()
        base = build_model(tiny_config(), ["road", "car"], [False, True]).eval()
        config = LearnConfig(iterations=2, dense_forest_trees=4, dense_stuff_share=stuff_share,
                             dense_stuff_share_below=1.0)  # whatever the tiny base recognises
        learn_module.learn_classes(base, both, config)
        assert [c.fixed_shares for c in seen] == [(None, stuff_share)]
        if stuff_share is not None:  # a share above 0 keeps the forest
            assert float(base.groups[-1].head.pixel_stage.blend[1]) == stuff_share


def test_stuff_shares_are_set_only_where_the_base_model_recognises_little_of_the_painted_images():
    from types import SimpleNamespace

    from model.interactive.config import LearnConfig
    from model.interactive.learn import _Prepared

    def fixed(recognised: float, **settings):
        semantic = torch.zeros(10, 10, dtype=torch.int64)
        semantic.view(-1)[: round(recognised * 100)] = 3  # an old class on that share of the pixels
        prepared = SimpleNamespace(config=LearnConfig(**settings), is_thing=[True, False],
                                   reference=[SimpleNamespace(semantic=semantic)])
        return _Prepared._fixed_shares(prepared)

    assert fixed(0.0) == (None, 1.0) and fixed(0.1) == (None, 1.0)  # microscopy: the base sees (almost) nothing
    assert fixed(0.3) == (None, None)  # the scenes: the base knows them, the share is chosen
    assert fixed(0.3, dense_stuff_share_below=0.5, dense_stuff_share=0.75) == (None, 0.75)
    assert fixed(0.0, dense_stuff_share=None) == (None, None)


def test_a_share_set_in_advance_replaces_the_chosen_one_for_its_class_only():
    model = _model()
    head = model.groups[-1].head
    image, labels = _painting()
    entries = _entries(model, image, labels)
    fit_pixel_stage(head, entries, PixelFitConfig(trees=8))
    chosen = head.pixel_stage.blend.clone()
    fit_pixel_stage(head, entries, PixelFitConfig(trees=8, fixed_shares=(None, 0.25)))
    assert float(head.pixel_stage.blend[0]) == float(chosen[0]) and float(head.pixel_stage.blend[1]) == 0.25
    assert head.pixel_stage.forest.fitted
    with pytest.raises(ValueError, match="fixed_shares names 3 classes"):
        fit_pixel_stage(head, entries, PixelFitConfig(trees=8, fixed_shares=(None, 1.0, 1.0)))


def test_refine_that_fails_after_refitting_puts_the_forest_back_exactly(monkeypatch):
    from model.interactive import learn as learn_module
    from model.interactive.config import Example, LearnConfig, NewClass

    torch.manual_seed(0)
    model = build_model(tiny_config(), ["road", "car"], [False, True]).eval()
    image, labels = _painting()
    cells = ndimage.label(labels == 1)[0].astype(np.int32)  # four instances
    config = LearnConfig(iterations=4, dense_forest_trees=4)
    examples = [Example(image, cells, complete=True)]
    learn_module.learn_classes(model, [NewClass("cell", True, examples)], config)
    stage = model.groups[-1].head.pixel_stage
    assert stage.forest.fitted
    saved = {k: v.clone() for k, v in model.groups[-1].state_dict().items()}

    def fail(*args, **kwargs):
        raise RuntimeError("after the refit")

    monkeypatch.setattr(learn_module, "choose_thresholds", fail)
    flipped = Example(np.flipud(image).copy(), np.flipud(cells).copy(), complete=True)
    more = [Example(image, cells, complete=True), flipped]
    with pytest.raises(RuntimeError, match="after the refit"):
        learn_module.refine_last_step(model, [NewClass("cell", True, more)],
                                      LearnConfig(iterations=4, dense_forest_trees=9))
    state = model.groups[-1].state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    assert stage.forest.roots.numel() == 4


def test_the_forest_weighs_in_the_blend_only_where_its_out_of_bag_predictions_beat_the_head():
    from model.training.pixel_stage import blend_weights

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 4000)  # background, class 1, class 2
    truth = np.stack([labels == 1, labels == 2], 1).astype(float)
    noise = rng.uniform(0, 1, truth.shape)
    sharp, vague = 0.9 * truth + 0.05, 0.3 + 0.4 * noise  # a classifier that knows, one that guesses
    forest = np.stack([sharp[:, 0], vague[:, 1]], 1)  # the forest knows class 1 only, the head class 2 only
    head = np.stack([vague[:, 0], sharp[:, 1]], 1)
    assert blend_weights(forest, head, labels) == [1.0, 0.0]
    assert blend_weights(head, head, labels) == [0.5, 0.5]  # no better: the middle
