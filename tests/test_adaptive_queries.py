"""A prompt step with image-adaptive queries: queries start at the peaks of a per-step scorer."""

from dataclasses import replace

import pytest
import torch

from model import Example, LearnConfig, NewClass, learn_class
from model.network.adaptive_queries import AdaptiveGroup, centre_targets
from model.network.build import build_model
from model.network.classes import make_classes
from model.network.config import tiny_config
from model.network.eclipse import RawPrediction, to_chw_tensor
from model.network.position_encoding import sine_position_encoding
from model.network.postprocess import panoptic_merge

from test_interactive import _blobs, _same, _state_of

# Bit-identical results: scripts/run_tests.sh runs these again under other BLAS kernels.
pytestmark = pytest.mark.exact

FAST = LearnConfig.adaptive(iterations=6, batch_size=2, num_points=256, augment_variants=2, adaptive_queries=30)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model(tiny_config(), ["road", "car"], [False, True]).eval()


def _group(classes=("blob",), queries=4, dim=8) -> AdaptiveGroup:
    torch.manual_seed(0)
    return AdaptiveGroup(queries, dim, make_classes(list(classes), [True] * len(classes)), 3, True)


def test_queries_start_at_the_scorer_peaks_with_the_pixel_feature_and_its_position():
    group = _group(("a", "b"), queries=3)
    features = torch.randn(1, 8, 6, 7)
    scores = torch.full((1, 2, 6, 7), -5.0)
    scores[0, 0, 1, 2] = 3.0  # a peak of class a
    scores[0, 0, 1, 3] = 2.5  # beside it, lower: not a peak
    scores[0, 1, 4, 5] = 2.0  # a peak of class b
    scores[0, 0, 5, 0] = 1.0  # a weaker peak of class a
    group.score = lambda _: scores
    cls, pixel = group.select(scores)
    assert cls.tolist() == [[0, 1, 0]] and pixel.tolist() == [[1 * 7 + 2, 4 * 7 + 5, 5 * 7 + 0]]
    with torch.no_grad():
        group.content.copy_(torch.stack([torch.full((8,), 10.0), torch.full((8,), -10.0)]))
    content, position, bias = group.queries(features)
    assert content.shape == (1, 3, 8)
    # The projection starts as the identity: content = the class's prompt + the pixel's feature.
    torch.testing.assert_close(content[0, 0], 10.0 + features[0, :, 1, 2])
    torch.testing.assert_close(content[0, 1], -10.0 + features[0, :, 4, 5])
    encoding = sine_position_encoding(6, 7, 4)
    torch.testing.assert_close(position(0)[0, 2], encoding[0, :, 5, 0])  # the offsets start at zero


def test_a_small_image_gets_one_query_per_feature_pixel_at_most():
    group = _group(queries=50)
    content, position, _ = group.queries(torch.randn(2, 8, 3, 4))
    assert content.shape == (2, 12, 8) and position(2).shape == (2, 12, 8)


def test_a_query_mask_is_biased_towards_where_the_query_started_by_a_learned_reach():
    group = _group(queries=1)
    scores = torch.full((1, 1, 8, 8), -5.0)
    scores[0, 0, 2, 5] = 1.0
    group.score = lambda _: scores
    _, _, bias = group.queries(torch.randn(1, 8, 8, 8))
    hidden = torch.randn(1, 1, 8)
    near = bias(hidden, (8, 8))[0, 0]
    assert near[2, 5] == 0 and near.max() == 0 and near[2, 6] < 0 and near[7, 0] < near[2, 6]
    # At another resolution (a decoder level) the bias is centred on the same place of the image.
    assert bias(hidden, (16, 16))[0, 0, 4:6, 10:12].max() > bias(hidden, (16, 16))[0, 0, 12, 2]
    with torch.no_grad():  # a longer reach: a weaker pull
        group.locality.bias.fill_(5.0)
    assert bias(hidden, (8, 8))[0, 0, 7, 0] > near[7, 0]


def test_duplicates_of_an_adaptive_step_are_dropped_in_the_merge_and_old_queries_are_not(model):
    model.add_adaptive_step(["blob"], [True], num_queries=4)
    logits = torch.full((3, 4), -9.0)
    logits[0, 1] = logits[1, 2] = logits[2, 2] = 5.0  # an old car, and two blobs on one instance
    masks = torch.full((3, 10, 10), -9.0)
    masks[0, :3] = 9.0
    masks[0, 3:5] = -10.0  # (where no mask is on, the argmax goes to the first blob, not the car)
    masks[0, 5:, :5] = 8.5  # the car loses this to the blob: it keeps 30 of its 55 pixels
    masks[1, 5:] = 9.0
    masks[2, 5:9] = 8.0  # the duplicate wins only 8 of its 40 pixels
    masks[2, 5:9, 8:] = 9.5
    raw = RawPrediction(logits[None], masks[None], (40, 40), (10, 10), group_queries=[1, 2])
    thresholds = model._overlap_thresholds(raw, 0.0)
    assert thresholds.tolist() == pytest.approx([0.0, 0.8, 0.8])
    kept = panoptic_merge(logits, masks, [False, True, True], 0.0, thresholds)
    assert sorted(s.category_id for s in kept.segments) == [2, 3]  # the car and one blob
    everything = panoptic_merge(logits, masks, [False, True, True], 0.0, 0.0)
    assert sorted(s.category_id for s in everything.segments) == [2, 3, 3]
    strict = panoptic_merge(logits, masks, [False, True, True], 0.0, 0.8)  # for every query: the car goes too
    assert sorted(s.category_id for s in strict.segments) == [3]


def test_fragments_of_an_adaptive_step_below_its_min_area_are_dropped_at_any_output_size(model):
    group = model.add_adaptive_step(["blob"], [True], num_queries=2)
    logits = torch.full((3, 4), -9.0)
    logits[0, 1] = logits[1, 2] = logits[2, 2] = 5.0  # an old car (a 2-pixel segment) and two blobs
    masks = torch.full((3, 10, 10), -9.0)
    masks[0, 0, :2] = 9.0
    masks[1, 4:, 4:] = 9.0  # a blob of 36 pixels
    masks[2, 0, 8:] = 9.0  # a fragment of 2 pixels
    raw = RawPrediction(logits[None], masks[None], (10, 10), (10, 10), group_queries=[1, 2])
    assert model._min_areas(raw, (10, 10)) == 0.0  # nothing set: Mask2Former's merge
    assert sorted(s.area for s in panoptic_merge(logits, masks, [False, True, True]).segments) == [2, 2, 36]
    group.min_area = 18.0
    areas = model._min_areas(raw, (10, 10))
    assert areas.tolist() == [0.0, 18.0, 18.0]
    kept = panoptic_merge(logits, masks, [False, True, True], 0.0, 0.0, areas).segments
    assert sorted((s.category_id, s.area) for s in kept) == [(2, 2), (3, 36)]  # the old car is kept
    # At twice the size every segment has four times the pixels, and so does the rule.
    assert model._min_areas(raw, (20, 20)).tolist() == [0.0, 72.0, 72.0]
    big = masks.repeat_interleave(2, 1).repeat_interleave(2, 2)
    kept = panoptic_merge(logits, big, [False, True, True], 0.0, 0.0, model._min_areas(raw, (20, 20))).segments
    assert sorted(s.area for s in kept) == [8, 144]


def test_centre_targets_peak_at_each_instance_centre_cover_stuff_and_say_what_is_known():
    masks = torch.zeros(3, 40, 40, dtype=torch.bool)
    masks[0, 4:24, 4:24] = True  # a thing instance, 20 px: 5 feature pixels
    masks[1, 28:40, 0:40] = True  # a stuff region
    masks[2, 0:12, 28:40] = True  # known background
    target = {"labels": torch.tensor([5, 6, 0]), "masks": masks}
    heat, known = centre_targets(target, [5, 6], [True, False], (10, 10))
    thing, stuff = heat[0], heat[1]
    assert thing[3, 3] == 1.0 and 0 < thing[1, 1] < thing[2, 2] < 1.0 and thing[8, 8] == 0
    assert (stuff[7:, :] == 1).all() and stuff[:7].sum() == 0
    assert known[3, 3] and known[9, 0] and known[0, 9] and not known[5, 8]  # unpainted: unknown
    # No background mask: the painting is complete, every pixel known.
    _, known = centre_targets({"labels": target["labels"][:2], "masks": masks[:2]}, [5, 6], [True, False], (10, 10))
    assert known.all()


def test_the_scorer_learns_where_the_instances_are_and_fragments_go_by_the_painted_sizes(model, tmp_path):
    from model.io.model_files import load_step, save_step

    image, instances = _blobs(0)
    learn_class(model, "blob", True, [Example(image, instances, complete=True)],
                replace(FAST, iterations=60, batch_size=2))
    group = model.groups[-1]
    # The fragment rule comes from the painting (half the smallest painted instance, at least 4 pixels),
    # the merge applies it, and the step's file keeps it.
    areas = torch.bincount(torch.from_numpy(instances).long().flatten())[1:]
    assert group.min_area == pytest.approx(max(4.0, FAST.min_area_fraction * int(areas[areas > 0].min())))
    new_class, area = model.class_ids(1)[0], group.min_area
    assert any(s.category_id == new_class for s in model.predict(image).segments)
    group.min_area = 1e9  # every segment of the step is a fragment now
    assert not any(s.category_id == new_class for s in model.predict(image).segments)
    group.min_area = area
    save_step(model, 1, tmp_path / "step.safetensors")
    model.remove_last_step()
    group = load_step(model, tmp_path / "step.safetensors")
    assert group.min_area == area
    test_image, test_instances = _blobs(1)
    with torch.no_grad():
        encoded = model.encode_images(to_chw_tensor(test_image)[None])
        pixels = group.pixel_features(encoded.mask_features, encoded.dense.levels)
        cls, pixel = group.select(group.score(pixels))
    width = encoded.mask_features.shape[-1]
    count = int(test_instances.max())
    ys, xs = pixel[0, :count] // width * 4 + 2, pixel[0, :count] % width * 4 + 2
    hits = {int(test_instances[y, x]) for y, x in zip(ys.tolist(), xs.tolist())} - {0}
    # The top peaks fall on distinct instances: most of the 24 (a prompt step has 10 queries in all).
    assert len(hits) >= 0.75 * count


def test_adaptive_step_keeps_old_outputs_bit_identical_saves_and_undo_is_exact(model, tmp_path):
    from model import load_model, save_model

    image, instances = _blobs(0)
    x = to_chw_tensor(image)[None]
    before_state = _state_of(model)
    with torch.no_grad():
        before = model.infer(x)
    result = learn_class(model, "blob", True, [Example(image, instances)], FAST)
    assert result.state == "done" and result.learner == "adaptive" and result.delta == model.deltas[-1]
    assert model.groups[-1].num_queries == 30 and model.groups[-1].learner == "adaptive"
    with torch.no_grad():
        after = model.infer(x)
    q = before.logits.shape[1]
    assert after.logits.shape[1] == q + 30
    old = list(range(before.logits.shape[-1] - 1))
    assert torch.equal(after.logits[:, :q, old], before.logits[..., :-1])
    assert torch.equal(after.mask_logits[:, :q], before.mask_logits)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert isinstance(loaded.groups[-1], AdaptiveGroup) and loaded.groups[-1].num_queries == 30
    assert torch.equal(loaded.predict(image).panoptic_seg, model.predict(image).panoptic_seg)
    model.remove_last_step()
    assert _same(before_state, _state_of(model))


def test_refine_retrains_an_adaptive_step_as_one(model):
    from model.interactive.learn import refine_last_step

    image, instances = _blobs(0)
    learn_class(model, "blob", True, [Example(image, instances)], FAST)
    learned = _state_of(model)
    result = refine_last_step(model, [NewClass("blob", True, [Example(image, instances), Example(*_blobs(1))])],
                              LearnConfig(iterations=4))  # a dense config: the step's own kind decides
    assert result.refined and result.learner == "adaptive" and len(result.losses) == 4
    assert isinstance(model.groups[-1], AdaptiveGroup) and not _same(learned, _state_of(model))


def test_a_step_file_with_a_bad_adaptive_layout_is_refused(model, tmp_path):
    from model.io.model_files import load_step, save_step
    from model.io.tensor_files import CheckpointError, load_tensor_file, save_tensor_file

    model.add_adaptive_step(["blob"], [True], num_queries=5)
    save_step(model, 1, tmp_path / "step.safetensors")
    model.remove_last_step()
    tensors, meta = load_tensor_file(tmp_path / "step.safetensors", kind="eclipse-step")
    for key, value in (("queries", 0), ("min_area", -1.0), ("min_area", "many")):
        bad = meta | {"adaptive_queries": meta["adaptive_queries"] | {key: value}}
        save_tensor_file(tmp_path / "bad.safetensors", tensors, "eclipse-step", bad)
        with pytest.raises(CheckpointError, match="adaptive|invalid"):
            load_step(model, tmp_path / "bad.safetensors")
    assert model.num_steps == 0
    loaded = load_step(model, tmp_path / "step.safetensors")
    assert isinstance(loaded, AdaptiveGroup) and loaded.num_queries == 5


def test_adaptive_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="adaptive_queries"):
        LearnConfig.adaptive(adaptive_queries=0)
    assert LearnConfig.for_learner("adaptive").learner == "adaptive"
