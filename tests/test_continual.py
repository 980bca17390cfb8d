"""Continual steps: parameter parity with the paper, and no forgetting by construction."""

import pytest
import torch
from training_helpers import compute_loss

from model.network.build import build_model
from model.network.config import paper_config, tiny_config
from model.training.criterion import LossConfig, build_criterion

# Bit-identical results: scripts/run_tests.sh runs these again under other BLAS kernels.
pytestmark = pytest.mark.exact


def _names(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return build_model(paper_config(), _names("base", 100), [i % 3 > 0 for i in range(100)], backbone_weights="random")


@pytest.mark.parametrize("prompts,classes,expected", [(10, 10, 488_971), (50, 50, 601_651), (7, 3, None)])
def test_paper_step_trainable_parameters(paper_model, prompts, classes, expected):
    total = sum(p.numel() for p in paper_model.parameters())
    assert 43_000_000 < total < 45_000_000, total
    assert total == 44_238_565  # the official step-0 R50 model, parameter for parameter
    paper_model.add_step(_names("new", classes), [True] * classes, prompts, train_no_object=True)
    try:
        formula = 2560 * prompts + 257 * classes + 460_801
        assert paper_model.num_trainable_parameters() == formula
        if expected is not None:
            assert formula == expected
    finally:
        paper_model.remove_last_step()
    # With the no-object head frozen, the step trains 131,841 parameters fewer.
    paper_model.add_step(_names("new", classes), [True] * classes, prompts, train_no_object=False)
    try:
        assert paper_model.num_trainable_parameters() == 2560 * prompts + 257 * classes + 460_801 - 131_841
    finally:
        paper_model.remove_last_step()


def test_add_step_initialisation(paper_model):
    g = paper_model.add_step(_names("new", 4), [True, False, True, False], 5)
    try:
        base = paper_model.groups[0]
        assert torch.equal(g.content, base.content.mean(0).expand(5, -1))
        assert g.positions.shape == (9, 5, 256)
        assert torch.allclose(g.positions, base.positions.mean((0, 1)).expand(9, 5, -1))
        assert all(torch.equal(a, b) for a, b in zip(g.mask_mlp.parameters(), base.mask_mlp.parameters()))
        no_obj = base.no_object_head
        assert torch.equal(g.class_head.layers[0].weight, no_obj.layers[0].weight)
        assert torch.equal(g.class_head.layers[2].weight, no_obj.layers[2].weight.expand(4, -1))
        assert torch.equal(g.class_head.layers[2].bias, no_obj.layers[2].bias.expand(4))
        assert paper_model.num_classes == 104 and paper_model.class_ids(1) == [101, 102, 103, 104]
    finally:
        paper_model.remove_last_step()


def test_add_step_rejects_bad_requests(paper_model):
    with pytest.raises(ValueError, match="already used"):
        paper_model.add_step(["base3"], [True], 5)
    with pytest.raises(ValueError, match="num_prompts"):
        paper_model.add_step(["x"], [True], 0)
    with pytest.raises(ValueError, match="flags"):
        paper_model.add_step(["x", "y"], [True], 5)
    assert paper_model.num_steps == 0
    with pytest.raises(ValueError, match="no continual step"):
        paper_model.remove_last_step()


def _scene(seed: int, size=(64, 64)):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, 3, *size), generator=g, dtype=torch.uint8)
    masks = torch.zeros(2, *size, dtype=torch.bool)
    masks[0, 8:30, 10:40] = True
    masks[1, 36:60, 20:50] = True
    image[0, :, masks[0]] = 200
    image[0, :, masks[1]] = 30
    return image, masks


@torch.no_grad()
def _snapshot(model, image):
    x, _ = model.preprocess(image)
    mask_features, memories = model.encode(x)
    out = model.decode(mask_features, memories)
    return out, mask_features


def test_no_forgetting_by_construction():
    torch.manual_seed(0)
    model = build_model(tiny_config(), _names("base", 5), [True, True, False, True, False]).eval()
    model.add_step(["s1a", "s1b"], [True, False], 4)  # an earlier step that must also stay intact
    image, masks = _snapshot_input = _scene(1)
    before, _ = _snapshot(model, image)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items()}
    cols_before = model.num_classes

    model.add_step(["new0", "new1"], [True, False], 4)
    new_group = model.groups[-1]
    criterion = build_criterion(model, LossConfig(num_points=256))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    targets = [{"labels": torch.tensor([model.class_ids(2)[0], model.class_ids(2)[1]]), "masks": masks}]
    trained_before = {k: v.clone() for k, v in new_group.state_dict().items()}
    for _ in range(3):
        loss = compute_loss(model, criterion, image, targets)["loss"]
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert any(not torch.equal(v, trained_before[k]) for k, v in new_group.state_dict().items()), "step did not train"

    # Every tensor that existed before the step is bit-identical.
    after_state = model.state_dict()
    for key, value in frozen_before.items():
        assert torch.equal(after_state[key], value), f"frozen tensor changed: {key}"

    after, mask_features = _snapshot(model, image)
    old_queries = sum(g.num_queries for g in model.groups[:-1])
    for i in range(len(before.logits)):
        # Masks of every earlier group and their logits for the classes that existed before.
        assert torch.equal(after.mask_embeds[i][:, :old_queries], before.mask_embeds[i])
        assert torch.equal(after.logits[i][:, :old_queries, :cols_before], before.logits[i][:, :, :cols_before])
    assert torch.equal(after.mask_logits(mask_features)[:, :old_queries], before.mask_logits(mask_features))


def test_decoding_from_the_prepared_memory_is_exact():
    """Continual training keeps the decoder's projected memory per image; decoding from it gives exactly
    what decoding from the features does."""
    from model.network.decoder import DecoderMemory

    torch.manual_seed(0)
    model = build_model(tiny_config(), _names("base", 3), [True, True, False]).eval()
    model.add_step(_names("new", 2), [True, False], 3)
    with torch.no_grad():
        mask_features, memories = model.encode(model.preprocess(torch.rand(2, 3, 64, 64) * 255)[0])
        direct = model.decode(mask_features, memories)
        prepared = DecoderMemory.cat([model.decoder.prepare([m[i : i + 1] for m in memories], mask_features[i : i + 1])
                                      for i in range(2)])
        cached = model.decode(mask_features, None, prepared=prepared)
    for i in range(direct.num_predictions):
        torch.testing.assert_close(cached.class_logits(i), direct.class_logits(i), rtol=0, atol=1e-6)
        torch.testing.assert_close(cached.mask_embeds[i], direct.mask_embeds[i], rtol=0, atol=1e-6)
