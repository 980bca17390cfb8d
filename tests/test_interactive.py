"""Teaching a class from painted examples (the headless core of the napari Learn button)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from model import Example, LearnConfig, learn_class
from model.network.build import build_model
from model.network.config import tiny_config

# Tests marked `exact` assert bit-identical results (the model untouched, old outputs unchanged, undo):
# scripts/run_tests.sh runs them again under other BLAS kernels. Tests of what a step learns (how many
# instances it finds) are not: under those slow kernels they only cost time (the partial painting took
# 127 s there).

FAST = LearnConfig.prompts(iterations=6, batch_size=2, num_points=256, augment_variants=2)  # a prompt step
DENSE = LearnConfig(iterations=150, augment_variants=2)  # the default learner: a dense step
# A prompt step with image-adaptive queries.
ADAPTIVE = LearnConfig.adaptive(iterations=6, batch_size=2, num_points=256, augment_variants=2, adaptive_queries=20)


def _examples(n=2, size=48):
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        image = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
        inst = np.zeros((size, size), np.int32)
        inst[5 + k : 20 + k, 6:22] = 1
        inst[28:40, 25 + k : 44] = 2
        image[inst > 0] = (250, 200, 40)
        out.append(Example(image, inst))
    return out


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model(tiny_config(), ["road", "car"], [False, True]).eval()


@pytest.mark.exact
def test_prompt_step_adds_a_step_and_reports(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = learn_class(model, "sun", True, _examples(), FAST)
    assert result.state == "done" and result.class_id == 3 and model.num_steps == 1
    assert [c.name for c in model.classes] == ["road", "car", "sun"]
    assert result.delta == model.deltas[-1] and result.delta_table
    assert len(result.losses) == FAST.iterations
    assert 0.0 <= result.painted.kept <= 1.0 and result.painted.images == len(_examples())
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items() if not k.endswith("groups.0.delta"))


@pytest.mark.exact
def test_cancel_leaves_the_model_exactly_as_it_was(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = iter(range(100))
    result = learn_class(model, "sun", True, _examples(), FAST, cancel=lambda: next(calls) >= 2)
    assert result.state == "cancelled" and model.num_steps == 0
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], v) for k, v in before.items())


@pytest.mark.exact
@pytest.mark.parametrize(
    "examples,name,message",
    [
        ([], "sun", "no examples"),
        ([Example(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32))], "sun", "empty"),
        ([Example(np.zeros((8, 8, 3), np.uint8), np.ones((8, 9), np.int32))], "sun", "does not match"),
        ([Example(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.float32))], "sun", "integer"),
        (None, "car", "already exists"),
    ],
)
def test_bad_requests_change_nothing(model, examples, name, message):
    examples = _examples(1) if examples is None else examples
    with pytest.raises(ValueError, match=message):
        learn_class(model, name, True, examples, FAST)
    assert model.num_steps == 0


def _blobs(seed: int, count: int = 24, size: int = 96):
    """A crowded image: `count` bright squares in a grid, more than a prompt step's 10 queries."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 70, (size, size, 3)).astype(np.uint8)
    instances = np.zeros((size, size), np.int32)
    k = 0
    for y in range(6, size - 8, 16):
        for x in range(6, size - 8, 16):
            if k < count:
                dy, dx = rng.integers(-2, 3, 2)
                k += 1
                instances[y + dy : y + dy + 9, x + dx : x + dx + 9] = k
    image[instances > 0] = (230, 200, 60)
    return image, instances


def _found(model, image, class_id):
    result = model.predict(image)
    return [s for s in result.segments if s.category_id == class_id]


def test_dense_step_finds_more_instances_than_a_prompt_step_has_queries(model):
    image, instances = _blobs(0)
    result = learn_class(model, "blob", True, [Example(image, instances)], DENSE)
    assert result.state == "done" and result.delta is None and model.groups[-1].num_queries == 0
    test_image, test_instances = _blobs(1)
    found = _found(model, test_image, result.class_id)
    assert len(found) > LearnConfig().num_prompts  # a prompt step could find at most 10
    assert len(found) >= 0.8 * test_instances.max()


@pytest.mark.exact
def test_dense_step_keeps_old_outputs_bit_identical_and_undo_is_exact(model, tmp_path):
    from model import load_model, save_model
    from model.network.eclipse import to_chw_tensor

    image, instances = _blobs(0)
    x = to_chw_tensor(image)[None]
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model.infer(x)
    learn_class(model, "blob", True, [Example(image, instances)], DENSE)
    with torch.no_grad():
        after = model.infer(x)
    # Every old query's class logits (old columns and no-object) and masks are exactly as before.
    old = list(range(before.logits.shape[-1] - 1))
    assert torch.equal(after.logits[..., old], before.logits[..., :-1])
    assert torch.equal(after.logits[..., -1], before.logits[..., -1]) and torch.equal(after.mask_logits, before.mask_logits)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.groups[-1].rule == model.groups[-1].rule  # look-alikes, ceiling and snapping travel
    assert model.groups[-1].rule.foreign_ceiling == DENSE.foreign_ceiling
    assert torch.equal(loaded.predict(image).panoptic_seg, model.predict(image).panoptic_seg)
    model.remove_last_step()
    state = model.state_dict()
    assert state.keys() == before_state.keys() and all(torch.equal(state[k], v) for k, v in before_state.items())


def test_partial_painting_teaches_only_what_it_says(model):
    """Five painted squares, with background strokes or with none (the first thing people do): the
    other squares are unknown, not background, so the dense step still finds many of them; the same five
    squares marked as a completely painted image teach that the other squares are background, and it
    finds few."""
    image, instances = _blobs(0)
    few = np.where(np.isin(instances, [1, 8, 14, 19, 24]), instances, 0)
    strokes = np.zeros(instances.shape, bool)
    strokes[::16, :] = strokes[:, ::16] = True  # grid lines between the squares
    strokes &= instances == 0
    # The tiny random model's maps say little about squares: the full-resolution path reads the pixels.
    config = replace(DENSE, iterations=300, dense_fine=8)
    found = {}
    for name, example in (("strokes", Example(image, few, strokes)), ("nothing", Example(image, few)),
                          ("complete", Example(image, few, complete=True))):
        learner = build_model(tiny_config(), ["road", "car"], [False, True]).eval()
        learner.load_state_dict(model.state_dict())
        result = learn_class(learner, "blob", True, [example], config)
        found[name] = len(_found(learner, _blobs(1)[0], result.class_id))
    assert found["strokes"] >= 8 and found["nothing"] >= 8, found  # of 25
    assert min(found["strokes"], found["nothing"]) >= 2 * max(found["complete"], 1), found


@pytest.mark.exact
def test_unknown_pixels_get_no_target():
    """Completely painted: every pixel known. Otherwise: the painted instances, the painted background
    and a thin band around each instance are known, the rest unknown."""
    from model.interactive.examples import ExampleSet
    from model.training.dense import UNKNOWN, dense_targets

    image, instances = _blobs(0, count=4, size=48)
    strokes = np.zeros(instances.shape, bool)
    strokes[:2] = True
    full, partial = (ExampleSet([example], [3], [True], None)
                     for example in (Example(image, instances, complete=True), Example(image, instances, strokes)))
    labels_full, distance = dense_targets(full.sample(0, 0)[1], [3], (48, 48))
    labels_partial, _ = dense_targets(partial.sample(0, 0)[1], [3], (48, 48))
    assert set(labels_full.unique().tolist()) == {0, 1}  # painted completely: everything is known
    band = ndimage.binary_dilation(instances > 0, iterations=2) & (instances == 0)
    far = torch.from_numpy(~ndimage.binary_dilation(instances > 0, iterations=2))
    assert (labels_partial[2:][far[2:]] == UNKNOWN).all()
    assert (labels_partial[torch.from_numpy(band)] == 0).all() and (labels_partial[:2] == 0).all()
    assert (labels_partial[torch.from_numpy(instances > 0)] == 1).all()
    assert float(distance.max()) == 1.0 and float(distance[torch.from_numpy(instances == 0)].max()) == 0.0


@pytest.mark.exact
def test_a_stuff_class_with_nothing_known_as_background_is_refused(model):
    """Stuff painted in part, no background painted, nothing the model knows for sure: nothing says
    where the class is not, and Learn says so instead of learning "everything is the class"."""
    image = np.full((48, 48, 3), 90, np.uint8)
    region = np.zeros((48, 48), np.int32)
    region[10:20, 10:30] = 1
    with pytest.raises(ValueError, match="nothing says where the new classes are not"):
        learn_class(model, "sand", False, [Example(image, region)], replace(DENSE, iterations=2))
    assert model.num_steps == 0
    result = learn_class(model, "sand", False, [Example(image, region, complete=True)], replace(DENSE, iterations=2))
    assert result.state == "done"


@pytest.mark.exact
@pytest.mark.parametrize("learner", ["dense", "prompts", "adaptive"])
def test_a_failure_after_the_step_is_added_leaves_the_model_as_before(model, monkeypatch, learner):
    import model.interactive.learn as learn

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure in the report")

    monkeypatch.setattr(learn, "painted_images_report", broken)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = {"dense": DENSE, "prompts": FAST, "adaptive": ADAPTIVE}[learner]
    with pytest.raises(RuntimeError, match="injected"):
        learn_class(model, "sun", True, _examples(1), config)
    state = model.state_dict()
    assert model.num_steps == 0 and state.keys() == before.keys()
    assert all(torch.equal(state[k], v) for k, v in before.items())


@pytest.mark.exact
def test_look_alikes_are_the_old_classes_on_the_painted_pixels_however_unsure():
    from types import SimpleNamespace

    from model.interactive.negatives import find_look_alikes, old_class_negatives

    instances = np.zeros((20, 20), np.int32)
    instances[:10, :10] = 1
    semantic = torch.zeros(20, 20, dtype=torch.int64)
    semantic[:10, :8] = 4  # the model calls most of the painted object class 4, unsure
    semantic[:10, 8:10] = 6  # and a sliver (2% of the image, 20% of the object) class 6
    semantic[15:, :] = 4  # elsewhere class 4 is sure
    semantic[10:15, :] = 2  # and class 2 is sure
    confidence = torch.where(semantic > 0, 0.3, 0.0)
    confidence[10:] = 0.95
    ref = SimpleNamespace(semantic=semantic, confidence=confidence)
    example = Example(np.zeros((20, 20, 3), np.uint8), instances, np.zeros((20, 20), bool))
    assert find_look_alikes([example], [ref]) == [4, 6]
    _, extra, _ = old_class_negatives([example], [ref], [np.zeros((20, 20, 3), np.uint8)], [ref], [4, 6])
    negatives = extra[0].background
    assert negatives[10:15].all() and not negatives[15:].any()  # sure class 2 is taught as "not it"; 4 never


@pytest.mark.exact
def test_large_painted_images_train_as_crops_around_the_painting(model):
    from model.interactive.crops import centre_crop, crop_to_painting

    rng = np.random.default_rng(0)
    image = (rng.random((1100, 900, 3)) * 255).astype(np.uint8)
    instances = np.zeros((1100, 900), np.int32)
    instances[20:60, 30:70] = 1  # top left
    instances[40:70, 200:240] = 2  # near it: the same window
    instances[1000:1050, 800:860] = 3  # far away: a window of its own
    background = np.zeros((1100, 900), bool)
    background[600:610, 400:500] = True  # painted background needs a window too
    crops = crop_to_painting([Example(image, instances, background)], side=256)
    assert len(crops) == 3 and all(max(c.instances.shape) <= 256 for c in crops)
    assert sorted(int(c.instances.max()) for c in crops) == [0, 2, 3]
    assert sum(int((c.instances > 0).sum()) for c in crops) == int((instances > 0).sum())  # all painted, once
    assert sum(int(c.background.sum()) for c in crops) == int(background.sum())
    small = Example(image[:200, :200], instances[:200, :200])
    assert crop_to_painting([small], side=256) == [small]
    # Marked complete with nothing painted (an image without the class): its centre, not nothing.
    (empty,) = crop_to_painting([Example(image, np.zeros_like(instances), complete=True)], side=256)
    assert empty.complete and empty.instances.shape == (256, 256) and not empty.instances.any()
    assert crop_to_painting([Example(image, np.zeros_like(instances))], side=256) == []
    assert centre_crop(image, 256).shape == (256, 256, 3)

    result = learn_class(model, "blob", True, [Example(image, instances, background)],
                         replace(DENSE, iterations=3, max_side=256))
    assert result.state == "done" and model.num_steps == 1


@pytest.mark.exact
def test_several_classes_learn_in_one_step_and_paintings_of_one_image_merge(model):
    from model import NewClass
    from model.interactive.examples import merge_classes
    from model.interactive.learn import learn_classes

    image, blobs = _blobs(0, count=12)  # two rows of blobs at the top
    sky = np.zeros(blobs.shape, np.int32)
    sky[60:] = 1  # the bottom: a stuff class painted on the same image
    image[60:] = (40, 90, 250)
    merged = merge_classes([NewClass("blob", True, [Example(image, blobs)]),
                            NewClass("sky", False, [Example(image, sky)])])
    assert len(merged) == 1  # one image, two classes
    tags = merged[0].instance_classes
    assert sorted(set(tags.values())) == [0, 1] and list(tags.values()).count(1) == 1 and len(tags) == 13
    result = learn_classes(model, [NewClass("blob", True, [Example(image, blobs)]),
                                   NewClass("sky", False, [Example(image, sky)])], DENSE)
    assert model.num_steps == 1 and [c.name for c in model.groups[-1].classes] == ["blob", "sky"]
    assert result.class_ids == [3, 4]
    found = {s.category_id for s in model.predict(image).segments}
    assert {3, 4} <= found


def _state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.exact
def test_refine_retrains_the_newest_step_and_cancel_or_failure_put_it_back(model, monkeypatch):
    from model import NewClass
    from model.interactive import learn as learn_module
    from model.interactive.learn import refine_last_step

    base = _state_of(model)
    image, instances = _blobs(0, count=6)
    learn_class(model, "blob", True, [Example(image, instances)], replace(DENSE, iterations=20))
    learned, rule = _state_of(model), model.groups[-1].rule
    more = [Example(image, instances), Example(*_blobs(1))]  # painted more
    # Cancel: the step exactly as learned.
    result = refine_last_step(model, [NewClass("blob", True, more)], DENSE, cancel=lambda: True)
    assert result.state == "cancelled" and _same(learned, _state_of(model)) and model.groups[-1].rule == rule
    # A failure in the report: the same.
    real = learn_module.painted_images_report
    monkeypatch.setattr(learn_module, "painted_images_report", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        refine_last_step(model, [NewClass("blob", True, more)], DENSE)
    assert _same(learned, _state_of(model)) and model.num_steps == 1
    monkeypatch.setattr(learn_module, "painted_images_report", real)
    # Refine: the same step, retrained from where it was; the base untouched; undo exact.
    result = refine_last_step(model, [NewClass("blob", True, more)], replace(DENSE, iterations=20))
    assert result.state == "done" and result.refined and model.num_steps == 1
    refined = _state_of(model)
    assert not _same(learned, refined)
    assert all(torch.equal(refined[k], v) for k, v in base.items())  # old tensors bit-identical
    with pytest.raises(ValueError, match="exactly those classes"):
        refine_last_step(model, [NewClass("other", True, more)], DENSE)
    model.remove_last_step()
    assert _same(base, _state_of(model))


@pytest.mark.exact
def test_delta_choice_at_mask_resolution_merges_from_cached_masks_exactly(model):
    from model.evaluation.deltas import _nearest, select_deltas
    from model.interactive.examples import labelled
    from model.network.eclipse import to_chw_tensor

    examples = _examples()
    learn_class(model, "sun", True, examples, FAST)
    raw = model.infer(to_chw_tensor(examples[0].image)[None])
    size = (12, 12)
    cached = model.merge(raw, output_size=size, masks=model.resized_masks(raw, 0, size))
    direct = model.merge(raw, output_size=size)
    assert torch.equal(cached.panoptic_seg, direct.panoptic_seg) and cached.segments == direct.segments
    ids = np.arange(48 * 48).reshape(48, 48)
    assert np.array_equal(_nearest(ids, (12, 12)), ids[2::4, 2::4])  # pixel centres: rows and columns 2, 6, ...
    reference = [model.predict(e.image) for e in examples]
    items = [labelled(e, [3]) for e in examples]
    fast, table = select_deltas(model, items, reference, scale=4)
    assert len(table) == 48 and fast[-1] in {row["deltas"][-1] for row in table}


@pytest.mark.exact
def test_the_report_keeps_other_open_images_apart(model):
    image, instances = _blobs(0)
    others = [_blobs(2)[0], np.full((64, 64, 3), 30, np.uint8)]
    result = learn_class(model, "blob", True, [Example(image, instances)], replace(DENSE, iterations=30),
                         context=others)
    o = result.others
    assert o is not None and o.images == 2
    assert 0.0 <= o.kept <= 1.0 and 0.0 < o.claimed <= 1.0  # the blob image holds the class too
    assert result.painted is not None


@pytest.mark.exact
@pytest.mark.parametrize("learner", ["prompts", "adaptive", "dense"])
def test_learn_reports_what_predicting_afresh_gives(model, learner):
    """Learn keeps each image's frozen features and only decodes them again after the step: its report
    must be what predicting the images afresh gives, for both kinds of step."""
    from model.interactive.frozen import FrozenImages

    examples = _examples()
    context = [_blobs(2)[0][:48, :48]]
    before = [model.predict(e.image) for e in examples + [Example(context[0], None)]]
    config = {"prompts": FAST, "adaptive": ADAPTIVE, "dense": replace(DENSE, iterations=20)}[learner]
    result = learn_class(model, "sun", True, examples, config, context=context)
    one = FrozenImages(model, [examples[0].image]).encoded[0].nbytes
    frozen = FrozenImages(model, [e.image for e in examples] + context, budget_bytes=one)  # one kept
    assert frozen.encoded[0] is not None and frozen.encoded[1:] == [None, None]
    for k, image in enumerate([e.image for e in examples] + context):
        kept, fresh = frozen.predict(model, k), model.predict(image)
        assert torch.equal(kept.panoptic_seg, fresh.panoptic_seg) and kept.segments == fresh.segments
    after = [model.predict(e.image).semantic.numpy() for e in examples]
    outside = [np.asarray(e.instances) == 0 for e in examples]
    same = sum(int((a[o] == b.semantic.numpy()[o]).sum()) for a, b, o in zip(after, before, outside))
    assert result.painted.kept == pytest.approx(same / sum(int(o.sum()) for o in outside))
    after_context, was = model.predict(context[0]).semantic.numpy(), before[-1].semantic.numpy()
    assert result.others.claimed == pytest.approx(np.isin(after_context, result.class_ids).mean())
    held = was > 0
    assert result.others.kept == pytest.approx((after_context == was)[held].mean() if held.any() else 1.0)


@pytest.mark.exact
def test_the_reports_say_so_when_a_step_takes_old_class_pixels(model):
    """A dense step whose head claims every pixel it may: the reports must show the old classes' loss
    on the painted images (outside the painting) and on the other images, not hide it."""
    from types import SimpleNamespace

    from model.interactive.frozen import FrozenImages
    from model.interactive.learn import other_images_report, painted_images_report

    examples = _examples()
    context = [_blobs(2)[0], np.full((64, 64, 3), 30, np.uint8)]
    images = [e.image for e in examples] + context
    before = [model.predict(image) for image in images]
    result = learn_class(model, "sun", True, examples, replace(DENSE, iterations=5), context=context)
    frozen = FrozenImages(model, images)
    n = len(examples)

    def reports(before):
        after = [model.merge(frozen.infer(model, k)) for k in range(len(images))]
        return (painted_images_report(after[:n], before[:n], examples, result.class_ids),
                other_images_report(after[n:], before[n:], result.class_ids))

    group = model.groups[-1]
    head = group.head
    if head.pixel_stage is not None:
        head.pixel_stage.blend.zero_()  # the head alone decides what the step claims
    with torch.no_grad():  # a step that finds nothing: everything kept
        for conv in [head.coarse] + ([head.refine[-1]] if head.refine is not None else []):
            conv.weight.zero_()
            conv.bias.zero_()
        head.coarse.bias[: group.num_classes] = -40.0
    painted, others = reports(before)
    assert (painted.kept, painted.claimed, others.kept, others.claimed) == (1.0, 0.0, 1.0, 0.0)
    with torch.no_grad():  # now a greedy one: foreground everywhere, far surer than any old class
        head.coarse.bias[: group.num_classes] = 40.0
    group.rule = replace(group.rule, override_margin=0.0, foreign_ceiling=1.0, snap_iou=0.0)
    # The tiny random base holds nothing for sure: say old class 1 ("road") held every pixel, weakly.
    road = [SimpleNamespace(semantic=torch.ones(np.asarray(image).shape[:2], dtype=torch.int64)) for image in images]
    painted, others = reports(road)
    assert painted.kept < 0.05 and painted.claimed > 0.95
    assert others.kept < 0.05 and others.claimed > 0.95


@pytest.mark.exact
def test_the_delta_choice_keeps_the_old_classes_on_known_background():
    """Scoring a prompt step's deltas on a painting: the previous model's map is voided where the new
    class is painted, not on the known background (there a new-class segment changes an old class)."""
    from model.evaluation.deltas import reference_outside_new
    from model.interactive.examples import labelled
    from model.network.postprocess import PanopticResult, Segment

    instances = np.zeros((8, 8), np.int32)
    instances[:4, :4] = 1
    example = Example(np.zeros((8, 8, 3), np.uint8), instances, complete=True)  # the rest: known background
    item = labelled(example, [3], [True], background_category=4)
    assert {s["category_id"] for s in item.gt_segments} == {3, 4}
    ref = PanopticResult(torch.ones((8, 8), dtype=torch.int32), [Segment(1, 1, False, 0.9, 64)])  # road everywhere
    ids, segments = reference_outside_new(item.gt_ids, item.gt_segments, ref, {3}, (8, 8))
    assert (ids[:4, :4] == 0).all() and (ids[instances == 0] == 1).all() and segments[0]["category_id"] == 1


@pytest.mark.exact
def test_learn_settings_that_cannot_work_are_refused_when_made():
    with pytest.raises(ValueError, match="unknown learner"):
        LearnConfig(learner="forest")
    with pytest.raises(ValueError, match="multiple of 32"):
        LearnConfig(dense_crop=100)  # a window must fall on the stride-32 grid of the features
    with pytest.raises(ValueError, match="at least one pixel"):
        LearnConfig(dense_forest_negatives=0)  # a forest fitted on no background would claim everything
    with pytest.raises(ValueError, match="dense_stuff_share"):
        LearnConfig(dense_stuff_share=1.5)
    assert LearnConfig.for_learner("prompts").learner == "prompts" and LearnConfig(dense_crop=0).dense_crop == 0
