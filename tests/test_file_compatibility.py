"""Model and step files written before the package layout changed still load, and predict the same."""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from model import load_model, load_step
from model.network.eclipse import to_chw_tensor

FIXTURE = Path(__file__).parent / "fixtures" / "format_v1"  # written at commit c7f9c4e, see its README


def test_a_model_folder_of_format_v1_loads_and_predicts_as_it_did():
    model = load_model(FIXTURE / "model_v1").eval()
    assert [c.name for c in model.classes] == ["road", "car", "sky", "bicycle", "grass"]
    assert model.num_steps == 1 and np.allclose(model.deltas, [0.4, -0.3])
    image = np.load(FIXTURE / "input.npy")
    expected = load_file(FIXTURE / "expected_outputs.safetensors")
    with torch.no_grad():
        raw = model.infer(to_chw_tensor(image)[None])
    # Equal up to float rounding (the thread count changes the order of sums), and the same segmentation.
    torch.testing.assert_close(raw.logits[0], expected["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(raw.mask_logits[0], expected["mask_logits"], rtol=0, atol=1e-4)
    assert torch.equal(model.predict(image).panoptic_seg, expected["panoptic"])
    # Undo still restores the deltas the step recorded.
    model.remove_last_step()
    assert model.num_steps == 0 and len(model.deltas) == 1


def test_a_step_file_of_format_v1_attaches_to_its_base():
    model = load_model(FIXTURE / "model_v1")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    model.remove_last_step()
    load_step(model, FIXTURE / "step_bicycle_grass.safetensors")
    state = model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
