"""Logit manipulation's optional rule: old groups keep their own no-object verdict."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from model.network.build import build_model
from model.network.config import tiny_config
from model.network.logit_manipulation import manipulate_logits


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_old_groups_keep_their_own_no_object_verdict_the_newest_group_is_untouched():
    # Base group: 2 queries, 2 classes; step group: 2 queries, 1 class. Columns: base0, base1, new0, no-object.
    logits = torch.full((1, 4, 4), -6.0)
    logits[0, :2, 0] = 0.0  # both base queries say "base0" at 0.5
    logits[0, :, 3] = torch.tensor([4.0, -4.0, 3.0, -3.0])  # the serving no-object head (retrained by the step)
    own = torch.tensor([[5.0, -8.0, 0.0, 0.0]])  # base query 0 was rejected by the base itself, query 1 kept
    deltas = [0.5, 0.5]
    published = manipulate_logits(logits, [2, 2], [2, 1], deltas)
    kept = manipulate_logits(logits, [2, 2], [2, 1], deltas, own)
    # The published rule overwrites both base queries' no-object with "is a new class here" (hardly).
    expected = _logit(max(0.001, 0.5 * torch.sigmoid(torch.tensor(-6.0)).item()))  # one new class, at -6
    assert published[0, 0, 3].item() == published[0, 1, 3].item() == pytest.approx(expected, abs=1e-5)
    assert published[0, 0, :2].sigmoid().max() > published[0, 0, 3].sigmoid(), "published: query 0 is an object"
    # With its own verdict, base query 0 stays rejected; query 1 (its own verdict: object) is as published.
    assert kept[0, 0, 3].item() == 5.0 and kept[0, 0, :2].sigmoid().max() < kept[0, 0, 3].sigmoid()
    assert torch.equal(kept[0, 1], published[0, 1])
    # The newest group is never vetoed by its own head (it is the serving head): as published.
    assert torch.equal(kept[0, 2:], published[0, 2:])
    assert torch.equal(manipulate_logits(logits, [2, 2], [2, 1], deltas, None), published)


def test_model_merges_with_old_groups_keeping_what_the_base_rejected():
    torch.manual_seed(0)
    model = build_model(tiny_config(), ["a", "b", "c"], [True, True, False], backbone_weights="random").eval()
    image = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        before = model.infer(image)
        model.add_step(["new"], [True], 4)
        model.groups[-1].no_object_head.layers[-1].bias.add_(3.0)  # what training the shared head may do
        model.set_deltas([0.5, 0.5])
        model.old_groups_keep_no_object = True  # the own logits are made only where they are used
        after = model.infer(image)
    n = model.groups[0].num_queries
    own_base = before.logits[0, :, -1]
    torch.testing.assert_close(after.own_no_object[0, :n], own_base)
    assert not torch.allclose(after.logits[0, :n, -1], own_base), "the serving no-object head has changed"

    def kept_queries(flag: bool) -> set[int]:
        model.old_groups_keep_no_object = flag
        logits = model._manipulate(after.logits, model.deltas, model._own_no_object(after, 0))[0, :n].sigmoid()
        return {q for q in range(n) if logits[q, :-1].max() > logits[q, -1]}

    base_keeps = {q for q in range(n) if before.logits[0, q, :-1].sigmoid().max() > before.logits[0, q, -1].sigmoid()}
    published, own = kept_queries(False), kept_queries(True)
    assert published - base_keeps, "the published rule brings back queries the base rejected (the case tested)"
    assert own <= base_keeps and own <= published
    # Merged results follow the flag.
    model.old_groups_keep_no_object = True
    with_own = model.merge(after, 0)
    model.old_groups_keep_no_object = False
    assert len(with_own.segments) <= len(model.merge(after, 0).segments)


def _a_model_and_a_painted_sun():
    """A tiny model (road, car) and an image with one painted "sun" instance."""
    torch.manual_seed(0)
    model = build_model(tiny_config(), ["road", "car"], [False, True]).eval()
    image = np.random.default_rng(0).integers(0, 80, size=(48, 48, 3), dtype=np.uint8)
    painted = np.zeros((48, 48), np.int32)
    painted[5:20, 6:22] = 1
    image[painted > 0] = (250, 200, 40)
    return model, image, painted


def test_the_choice_is_saved_with_the_step_undone_with_it_and_set_by_learn(tmp_path):
    from model import Example, LearnConfig, learn_class
    from model.io.model_files import load_model, save_model

    model, image, painted = _a_model_and_a_painted_sun()
    config = LearnConfig.prompts(iterations=2, batch_size=2, num_points=64, augment_variants=1,
                                 old_groups_keep_no_object=True)
    result = learn_class(model, "sun", True, [Example(image, painted)], config)
    assert result.state == "done" and model.old_groups_keep_no_object
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.old_groups_keep_no_object
    model.remove_last_step()
    assert not model.old_groups_keep_no_object, "undo restores the published rule"
    learn_class(model, "sun", True, [Example(image, painted)], replace(config, old_groups_keep_no_object=False))
    assert not model.old_groups_keep_no_object
    save_model(model, tmp_path / "published")
    assert not load_model(tmp_path / "published").old_groups_keep_no_object


@pytest.mark.exact  # old outputs bit-identical through two merge paths: rerun under other kernels
def test_a_step_laid_over_the_previous_prediction_changes_old_outputs_only_where_it_puts_a_segment():
    torch.manual_seed(0)
    model = build_model(tiny_config(), ["a", "b", "c"], [True, True, False], backbone_weights="random").eval()
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    before, before_semantic = model.predict(image), model.predict_semantic(image).numpy()
    with torch.no_grad():
        model.add_step(["new"], [True], 4)
        model.groups[-1].class_head.layers[-1].bias.fill_(4.0)  # its class head fires on every query, old ones too
        model.groups[-1].no_object_head.layers[-1].bias.add_(3.0)
        model.set_deltas([0.9, 0.5])
    new_id = model.class_ids(1)[0]
    old_pan, old_sem = before.panoptic_seg.numpy(), before.semantic.numpy()

    published = model.predict(image)
    new = published.semantic.numpy() == new_id
    assert new.any() and ((published.semantic.numpy() != old_sem) & ~new).any(), \
        "published: old segments go where the step puts none (the case tested)"

    model.groups[-1].lays_over_previous = True
    laid = model.predict(image)
    new_laid = laid.semantic.numpy() == new_id
    np.testing.assert_array_equal(new_laid, new)  # the step's own segments are those it gets merged with the old
    np.testing.assert_array_equal(laid.panoptic_seg.numpy()[~new], old_pan[~new])  # elsewhere: as before
    assert {s.id: s.category_id for s in laid.segments if s.category_id != new_id} == \
        {s.id: s.category_id for s in before.segments if (old_pan[~new] == s.id).any()}
    semantic = model.predict_semantic(image).numpy()
    np.testing.assert_array_equal(semantic[semantic != new_id], before_semantic[semantic != new_id])

    # With the dense step's claim rule, old pixels held surely by a class that is not a look-alike stay.
    from model.network.dense_segments import InstanceRule
    held = before.confidence.numpy()
    ceiling = float(np.median(held[new & (held > 0)]))  # the step's pixels: half held more surely than this
    assert (new & (held >= ceiling)).any() and (new & (held < ceiling)).any(), "the case tested"
    model.groups[-1].rule = InstanceRule(foreign_ceiling=ceiling, override_margin=0.0)
    claimed = model.predict(image)
    new_claimed = claimed.semantic.numpy() == new_id
    np.testing.assert_array_equal(new_claimed, new & (held < ceiling))
    np.testing.assert_array_equal(claimed.panoptic_seg.numpy()[~new_claimed], old_pan[~new_claimed])
    model.groups[-1].rule = InstanceRule(foreign_ceiling=ceiling, look_alikes=(3,), override_margin=0.0)
    assert (model.predict(image).semantic.numpy() == new_id).sum() > new_claimed.sum(), "look-alikes may be taken"


def test_learn_lays_a_prompt_step_over_the_previous_prediction_and_the_step_file_keeps_it(tmp_path):
    from model import Example, LearnConfig, learn_class
    from model.io.model_files import load_model, load_step, save_model, save_step
    from model.io.tensor_files import CheckpointError, load_tensor_file, save_tensor_file

    model, image, painted = _a_model_and_a_painted_sun()
    config = LearnConfig.prompts(iterations=2, batch_size=2, num_points=64, augment_variants=1)
    assert learn_class(model, "sun", True, [Example(image, painted)], config).state == "done"
    assert model.groups[-1].lays_over_previous
    rule = model.groups[-1].rule
    assert rule is not None and rule.foreign_ceiling == config.foreign_ceiling, "it takes pixels by the claim rule"
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").groups[-1]
    assert loaded.lays_over_previous and loaded.rule == rule
    model.remove_last_step()
    learn_class(model, "sun", True, [Example(image, painted)], replace(config, lay_over_previous=False))
    save_model(model, tmp_path / "published")
    assert not load_model(tmp_path / "published").groups[-1].lays_over_previous
    # A damaged flag is refused, naming it; a file written before the flag reads as published.
    save_step(model, 1, tmp_path / "step.safetensors")
    model.remove_last_step()
    tensors, meta = load_tensor_file(tmp_path / "step.safetensors", kind="eclipse-step")
    save_tensor_file(tmp_path / "bad.safetensors", tensors, "eclipse-step", meta | {"lays_over_previous": "yes"})
    with pytest.raises(CheckpointError, match="lays_over_previous"):
        load_step(model, tmp_path / "bad.safetensors")
    assert model.num_steps == 0
    older = {k: v for k, v in meta.items() if k != "lays_over_previous"}
    save_tensor_file(tmp_path / "older.safetensors", tensors, "eclipse-step", older)
    assert not load_step(model, tmp_path / "older.safetensors").lays_over_previous
