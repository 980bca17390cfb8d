"""Inference on images of any size and layout, and clear errors for bad input."""

import numpy as np
import pytest
import torch

from model.network.build import build_model
from model.network.config import tiny_config

# Bit-identical results: scripts/run_tests.sh runs these again under other BLAS kernels.
pytestmark = pytest.mark.exact


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config(), ["road", "car", "tree"], [False, True, False]).eval()


@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 3), (37, 53, 4), (3, 37, 53), (1, 1), (64, 64, 3)])
def test_any_size_and_layout(model, shape):
    image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    result = model.predict(image)
    hw = shape[1:] if shape[0] == 3 and len(shape) == 3 else shape[:2]
    assert tuple(result.panoptic_seg.shape) == hw
    ids = set(np.unique(result.panoptic_seg.numpy()).tolist()) - {0}
    assert ids == {s.id for s in result.segments}
    semantic = result.semantic.numpy()
    for s in result.segments:
        assert (semantic[result.panoptic_seg.numpy() == s.id] == s.category_id).all()
        assert 1 <= s.category_id <= 3 and 0 < s.score <= 1


def test_layouts_agree_and_output_size(model):
    hwc = np.random.default_rng(1).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    a = model.predict(hwc)
    b = model.predict(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
    c = model.predict(hwc.astype(np.float32))
    assert torch.equal(a.panoptic_seg, b.panoptic_seg) and torch.equal(a.panoptic_seg, c.panoptic_seg)
    assert tuple(model.predict(hwc, output_size=(20, 24)).panoptic_seg.shape) == (20, 24)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((2, 3, 8, 8), np.uint8), "shape"),
        (np.zeros((8, 8, 5), np.uint8), "shape"),
        (np.zeros((8, 8), bool), "dtype"),
        (np.zeros((0, 8), np.uint8), "empty"),
    ],
)
def test_bad_images_are_refused(model, image, message):
    with pytest.raises(ValueError, match=message):
        model.predict(image)


def test_preprocess_refuses_wrong_batch_layout(model):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.preprocess(torch.zeros(3, 8, 8))


def test_evaluation_at_a_test_size_scores_at_the_ground_truths_size():
    """The benchmark resizes images to the scenario's test size before predicting; predictions come
    back at the ground truth's size, and the resize itself follows the short side."""
    from model.data.labelled import LabelledImage
    from model.evaluation.evaluate import evaluate, evaluate_semantic, test_input
    from model.network.build import build_model
    from model.network.config import tiny_config

    torch.manual_seed(0)
    model = build_model(tiny_config(), ["road", "car"], [False, True]).eval()
    image = np.random.default_rng(0).integers(0, 255, (30, 45, 3), dtype=np.uint8)
    assert tuple(test_input(image, (64, 1000)).shape) == (3, 64, 96) and test_input(image, None) is image
    ids = np.zeros((30, 45), np.int64)
    ids[5:20, 5:30] = 1
    item = LabelledImage(image, ids, [{"id": 1, "category_id": 2, "iscrowd": 0}])
    pq = evaluate(model, [item], test_size=(64, 1000))
    miou = evaluate_semantic(model, [item], test_size=(64, 1000))
    assert pq["num_images"] == 1 and miou["num_images"] == 1 and 0 <= miou["miou"]["All"].miou <= 1
