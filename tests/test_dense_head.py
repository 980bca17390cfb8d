"""Dense steps' head: what it reads (the backbone's levels, the pixel decoder's maps and the image),
output at the image's resolution, crops for training, step files of the head and of version 1's."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import load_model, load_step, save_step
from model.network.build import build_model
from model.network.config import tiny_config
from model.network.dense_head import DENSE_INPUTS, DenseInputs, StrideFourHead
from model.network.eclipse import to_chw_tensor

# Bit-identical results: scripts/run_tests.sh runs these again under other BLAS kernels.
pytestmark = pytest.mark.exact

V1 = Path(__file__).parent / "fixtures" / "dense_v1"  # written at commit 752c870, see its README


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = build_model(tiny_config(), ["road", "car"], [False, True]).eval()
    m.add_dense_step(["cell", "medium"], [True, False], fine=8)  # with the full-resolution path
    with torch.no_grad():  # a head that says something
        for p in m.groups[-1].head.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m.eval()


def _image(seed=0, size=(64, 96)):
    return np.random.default_rng(seed).integers(0, 255, (*size, 3)).astype(np.uint8)


def test_the_head_reads_every_frozen_level_and_the_image_and_answers_at_full_resolution(model):
    image = _image()
    raw = model.infer(to_chw_tensor(image)[None])
    (logits,) = raw.dense_logits
    assert raw.dense_strides == [1] and logits.shape == (1, 4, 64, 96)  # 2 classes x (foreground, distance)
    encoded = model.encode_images(to_chw_tensor(image)[None])
    inputs = encoded.dense
    assert set(inputs.levels) == set(DENSE_INPUTS) and inputs.image.shape[-2:] == (64, 96)
    head = model.groups[-1].head
    with torch.no_grad():
        reference = head(inputs)
        for name in DENSE_INPUTS:  # every level matters
            levels = dict(inputs.levels)
            levels[name] = levels[name] + 1.0
            assert not torch.equal(head(DenseInputs(inputs.image, levels)), reference), name
        # One pixel of the image changes the output there, at full resolution, and only within the reach of
        # the filter bank (3 sigma, then second differences) and the two full-resolution 3x3 convolutions.
        reach = round(3 * max(head.filters.sigmas)) + 2 + 2
        poked = inputs.image.clone()
        poked[:, :, 30, 40] += 5.0
        diff = (head(DenseInputs(poked, inputs.levels)) - reference).abs().amax(1)[0]
        far = torch.ones_like(diff, dtype=torch.bool)
        far[30 - reach : 31 + reach, 40 - reach : 41 + reach] = False
        assert diff[30, 40] > 0 and not diff[far].any() and (diff > 0).sum() > 25


def test_a_crop_of_the_inputs_is_every_level_cut_at_its_stride(model):
    encoded = model.encode_images(to_chw_tensor(_image(size=(96, 128)))[None])
    crop = encoded.dense.crop(32, 64, 64, 64)
    assert crop.image.shape[-2:] == (64, 64)
    for name, level in crop.levels.items():
        full = encoded.dense.levels[name]
        stride = 96 // full.shape[-2]
        assert torch.equal(level, full[..., 32 // stride : 96 // stride, 64 // stride : 128 // stride]), name
    with pytest.raises(ValueError, match="aligned to 32"):
        encoded.dense.crop(16, 0, 64, 64)


def test_a_dense_step_file_round_trips_exactly(model, tmp_path):
    image = _image(1)
    before = model.predict(image)
    save_step(model, 1, tmp_path / "step.safetensors")
    group = model.groups[-1]
    model.remove_last_step()
    loaded = load_step(model, tmp_path / "step.safetensors")
    assert loaded.head.layout() == group.head.layout() and loaded.rule == group.rule
    after = model.predict(image)
    assert torch.equal(before.panoptic_seg, after.panoptic_seg) and before.segments == after.segments


def test_a_dense_step_of_version_1_still_loads_and_predicts_as_it_did():
    model = load_model(V1 / "model").eval()
    head = model.groups[-1].head
    assert isinstance(head, StrideFourHead) and model.groups[-1].rule.foreign_ceiling == 0.5
    image = np.load(V1 / "input.npy")
    expected = load_file(V1 / "expected_outputs.safetensors")
    with torch.no_grad():
        raw = model.infer(to_chw_tensor(image)[None])
    assert raw.dense_strides == [4]
    torch.testing.assert_close(raw.dense_logits[0], expected["dense_logits"], rtol=0, atol=1e-4)
    assert torch.equal(model.predict(image).panoptic_seg, expected["panoptic"])


def test_refining_a_version_1_step_says_why_it_cannot(tmp_path):
    from model.interactive.config import Example, NewClass
    from model.interactive.learn import refine_last_step

    model = load_model(V1 / "model").eval()
    image = np.load(V1 / "input.npy")
    cells = np.zeros(image.shape[:2], np.int32)
    cells[10:20, 10:20] = 1
    with pytest.raises(ValueError, match="earlier version"):
        refine_last_step(model, [NewClass("cell", True, [Example(image, cells, complete=True)])])
    assert model.num_steps == 1
