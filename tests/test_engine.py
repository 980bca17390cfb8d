"""The training engine: step 0 and step t, feature cache, resume, cancel, non-finite loss."""

import pytest
import torch

from model.network.build import build_model
from model.network.config import tiny_config
from model.training.criterion import LossConfig
from model.training.engine import NonFiniteLossError, TrainConfig, train

# Bit-identical results: scripts/run_tests.sh runs these again under other BLAS kernels.
pytestmark = pytest.mark.exact


class Shapes:
    """A few synthetic images: a bright square (class `square_id`) and a dark bar (class `bar_id`)."""

    def __init__(self, labels: tuple[int, int], count: int = 3, size: int = 64):
        self.labels, self.count, self.size = labels, count, size

    def __len__(self):
        return self.count

    def sample(self, index: int, augmentation_seed: int):
        g = torch.Generator().manual_seed(index * 31 + augmentation_seed % 7)
        s = self.size
        image = torch.randint(60, 120, (3, s, s), generator=g, dtype=torch.uint8)
        masks = torch.zeros(2, s, s, dtype=torch.bool)
        o = int(torch.randint(0, 8, (1,), generator=g))
        masks[0, 8 + o : 28 + o, 10:30] = True
        masks[1, 40:52, 5 + o : 60] = True
        image[:, masks[0]] = 230
        image[:, masks[1]] = 10
        return image, {"labels": torch.tensor(self.labels), "masks": masks}


def _config(**kw):
    base = dict(iterations=6, batch_size=2, lr=1e-3, seed=0, loss=LossConfig(num_points=256), augment_variants=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture()
def base_model():
    torch.manual_seed(0)
    return build_model(tiny_config(), ["square", "bar", "sky"], [True, True, False])


def test_step0_trains_everything_and_loss_falls(base_model):
    before = {k: v.clone() for k, v in base_model.state_dict().items()}
    result = train(base_model, Shapes((1, 2)), _config(iterations=30))
    assert result.state == "done" and result.iterations == 30
    assert sum(result.losses[-5:]) / 5 < 0.5 * sum(result.losses[:5]) / 5
    changed = [k for k, v in base_model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("decoder.groups.0") for k in changed)


def test_step_t_uses_the_cache_and_trains_only_the_step(base_model):
    base_model.add_step(["disc", "ring"], [True, True], 4)
    frozen = {k: v.clone() for k, v in base_model.state_dict().items() if not k.startswith("decoder.groups.1.")}
    progress = []
    result = train(base_model, Shapes((4, 5), count=2), _config(iterations=8), callback=progress.append)
    assert result.cache_misses <= 2 * 2  # 2 images x 2 augmentation variants
    assert result.cache_hits == 8 * 2 - result.cache_misses
    state = base_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert [p.iteration for p in progress] == list(range(1, 9)) + [8]
    assert progress[-1].state == "done" and progress[-1].eta_seconds == 0


def test_step_t_trains_the_same_from_the_cache_as_without_it(base_model):
    """The cache keeps frozen features, the decoder's memory (with or without its projected keys and
    values) and augmented targets per (image, variant): training from them must be exactly training from
    freshly computed ones (nothing cached may be changed in place by an iteration)."""
    from model.training.engine import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = []
        for cache_mb, keep in ((64, True), (64, False), (0, None)):
            model = build_model(tiny_config(), ["square", "bar", "sky"], [True, True, False])
            model.load_state_dict(base_model.state_dict())
            model.add_step(["disc", "ring"], [True, True], 4)
            torch.manual_seed(1)
            trainer = Trainer(model, Shapes((4, 5), count=2), _config(iterations=8, cache_mb=cache_mb))
            trainer.keep_projections = keep  # None: decided on the first sample
            losses = [trainer.step() for _ in range(8)]
            runs.append((losses, trainer.cache.hits, model.decoder.groups[1].state_dict()))
        assert runs[0][1] > 0 and runs[1][1] > 0 and runs[2][1] == 0
        for losses, _, state in runs[1:]:
            assert losses == runs[0][0]
            assert all(torch.equal(state[k], v) for k, v in runs[0][2].items())
    finally:
        torch.set_num_threads(threads)


def test_the_cache_keeps_projections_only_when_every_variant_fits(base_model):
    from model.training.engine import Trainer

    base_model.add_step(["disc", "ring"], [True, True], 4)
    roomy = Trainer(base_model, Shapes((4, 5), count=2), _config(cache_mb=64))
    roomy.step()
    tight = Trainer(base_model, Shapes((4, 5), count=2), _config(cache_mb=1, augment_variants=50))
    tight.step()
    assert roomy.keep_projections is True and tight.keep_projections is False
    entry = next(iter(tight.cache._entries.values()))
    assert entry[1].keys_values is None and entry[1].memories is not None


def test_resume_continues_exactly(base_model, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # exact comparisons need the same reduction order
    try:
        a = base_model
        b = build_model(tiny_config(), ["square", "bar", "sky"], [True, True, False])
        b.load_state_dict(a.state_dict())
        train(a, Shapes((1, 2)), _config(iterations=6))
        # b is interrupted after 4 iterations; the last resumable state was written at iteration 3.
        state = tmp_path / "state.pt"
        calls = iter(range(100))
        config = _config(iterations=6, checkpoint_every=3)
        r = train(b, Shapes((1, 2)), config, state_path=state, cancel=lambda: next(calls) >= 4)
        assert r.state == "cancelled" and r.iterations == 4
        saved_seconds = float(torch.load(state, weights_only=True)["seconds"])
        progress = []
        r2 = train(b, Shapes((1, 2)), config, state_path=state, resume=True, callback=progress.append)
        assert r2.iterations == 6 and len(r2.losses) == 6
        # Time before the interruption counts, so "time left" (seconds per iteration) stays honest.
        assert saved_seconds > 0 and progress[0].iteration == 4 and progress[0].seconds > saved_seconds
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k
    finally:
        torch.set_num_threads(threads)


def test_cancel_before_start_changes_nothing(base_model):
    before = {k: v.clone() for k, v in base_model.state_dict().items()}
    result = train(base_model, Shapes((1, 2)), _config(), cancel=lambda: True)
    assert result.state == "cancelled" and result.iterations == 0
    assert all(torch.equal(v, before[k]) for k, v in base_model.state_dict().items())


def test_non_finite_loss_stops_and_keeps_last_good_state(base_model, monkeypatch):
    base_model.add_step(["disc", "ring"], [True, True], 4)
    data = Shapes((4, 5))
    train(base_model, data, _config(iterations=2))
    good = {k: v.clone() for k, v in base_model.state_dict().items()}
    import model.training.engine as engine

    original = engine.predictions_from_output  # what a step's training takes its predictions from

    def nan_predictions(*args, **kw):
        preds = original(*args, **kw)
        preds[-1]["logits"] = preds[-1]["logits"] * float("nan")
        return preds

    monkeypatch.setattr(engine, "predictions_from_output", nan_predictions)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train(base_model, data, _config(iterations=2))
    assert all(torch.equal(v, good[k]) for k, v in base_model.state_dict().items())


def test_a_dense_step_trains_in_float32_on_cuda_as_it_predicts(base_model):
    """Dense inference runs in float32, so a dense step trains without autocast on CUDA too (checked
    without a GPU: the trainer is only built for the device, nothing runs there); prompt steps keep AMP."""
    from model.training.engine import Trainer

    config = _config(amp=True)
    base_model.add_dense_step(["disc"], [True])
    assert Trainer(base_model, Shapes((4, 4)), config, device="cuda").amp is False
    base_model.remove_last_step()
    base_model.add_step(["disc"], [True], 2)
    assert Trainer(base_model, Shapes((4, 4)), config, device="cuda").amp is True
    assert Trainer(base_model, Shapes((4, 4)), config, device="cpu").amp is False
