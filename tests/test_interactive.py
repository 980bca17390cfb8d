"""Teaching a class from painted examples (the headless core of the napari Learn button)."""

import numpy as np
import pytest
import torch

from model import Example, LearnConfig, learn_class
from model.network.build import build_model
from model.network.config import tiny_config

FAST = LearnConfig(iterations=6, batch_size=2, num_points=256, augment_variants=2)


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


def test_learn_adds_a_step_and_reports(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = learn_class(model, "sun", True, _examples(), FAST)
    assert result.state == "done" and result.class_id == 3 and model.num_steps == 1
    assert [c.name for c in model.classes] == ["road", "car", "sun"]
    assert result.delta == model.deltas[-1] and result.delta_table
    assert len(result.losses) == FAST.iterations
    assert 0.0 <= result.old_pixels_unchanged <= 1.0
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items() if not k.endswith("groups.0.delta"))


def test_cancel_leaves_the_model_exactly_as_it_was(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = iter(range(100))
    result = learn_class(model, "sun", True, _examples(), FAST, cancel=lambda: next(calls) >= 2)
    assert result.state == "cancelled" and model.num_steps == 0
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], v) for k, v in before.items())


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
