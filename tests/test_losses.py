import math

import pytest
import torch
import torch.nn.functional as F

from model.training.losses import (
    SetCriterion,
    calculate_uncertainty,
    dice_loss,
    get_uncertain_point_coords_with_randomness,
    sigmoid_bce_loss,
    sigmoid_focal_loss,
)
from model.training.matcher import HungarianMatcher, point_sample

K = 4  # classes 1..K, logit column K is no-object


def rect_masks(m: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """m distinct random rectangles [m,size,size] (bool)."""
    masks = torch.zeros(m, size, size, dtype=torch.bool)
    for i in range(m):
        y0, x0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
        h, w = torch.randint(size // 4, size // 2, (2,), generator=gen).tolist()
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return masks


def make_targets(ms, size=32, gen=None):
    gen = gen or torch.Generator().manual_seed(0)
    return [
        {"labels": torch.randint(1, K + 1, (m,), generator=gen), "masks": rect_masks(m, size, gen)} for m in ms
    ]


def make_criterion(num_points=256, class_weight=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    matcher = HungarianMatcher(class_weight=class_weight, num_points=num_points, generator=gen)
    return SetCriterion(K, matcher, class_weight=class_weight, num_points=num_points, generator=gen)


def test_point_sample_matches_grid_sample_centres():
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    # Pixel centres in [0,1] coords with align_corners=False are (j+0.5)/W.
    coords = torch.tensor([[[0.5 / 4, 0.5 / 4], [3.5 / 4, 1.5 / 4]]])
    out = point_sample(img, coords, align_corners=False)
    assert out.shape == (1, 1, 2)
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 7.0]))


def test_matcher_recovers_known_permutation():
    gen = torch.Generator().manual_seed(1)
    m, q, size = 5, 8, 32
    targets = make_targets([m], size=size, gen=gen)
    gt_masks, labels = targets[0]["masks"], targets[0]["labels"]
    perm = torch.randperm(q, generator=gen)[:m]  # query perm[j] predicts gt j
    mask_logits = torch.full((1, q, size // 2, size // 2), -10.0)
    logits = torch.full((1, q, K + 1), -10.0)
    down = F.interpolate(gt_masks[None].float(), size=(size // 2, size // 2), mode="nearest")[0]
    for j in range(m):
        mask_logits[0, perm[j]] = (2 * down[j] - 1) * 10
        logits[0, perm[j], labels[j] - 1] = 10.0
    (pred_idx, gt_idx), = HungarianMatcher(num_points=1024, generator=gen)(logits, mask_logits, targets)
    assert pred_idx.dtype == torch.long and gt_idx.dtype == torch.long
    assert len(pred_idx) == m
    assert dict(zip(gt_idx.tolist(), pred_idx.tolist())) == dict(enumerate(perm.tolist()))


def test_matcher_handles_empty_and_more_queries():
    targets = make_targets([0, 2])
    logits, mask_logits = torch.randn(2, 6, K + 1), torch.randn(2, 6, 8, 8)
    out = HungarianMatcher(num_points=128)(logits, mask_logits, targets)
    assert len(out[0][0]) == 0 and len(out[0][1]) == 0
    assert len(out[1][0]) == 2 and sorted(out[1][1].tolist()) == [0, 1]
    assert len(set(out[1][0].tolist())) == 2


def test_focal_loss_hand_computation():
    x = torch.tensor([[[0.3, -1.2]]])  # 1x1x2
    t = torch.tensor([[[1.0, 0.0]]])
    alpha, gamma = 5.0, 1.0
    p0, p1 = 1 / (1 + math.exp(-0.3)), 1 / (1 + math.exp(1.2))
    e0 = alpha * -math.log(p0) * (1 - p0) ** gamma  # positive: weighted by alpha
    e1 = 1.0 * -math.log(1 - p1) * p1**gamma  # negative: weight 1
    got = sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma)
    assert got.item() == pytest.approx((e0 + e1) / 2, rel=1e-5)
    assert sigmoid_focal_loss(x, t, reduction="none").shape == (1, 1, 2)


def test_dice_and_bce_on_known_masks():
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    perfect = (2 * t - 1) * 50
    assert dice_loss(perfect, t, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert sigmoid_bce_loss(perfect, t, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    zero = torch.zeros(1, 4)  # p = 0.5 everywhere
    # dice = 1 - (2*1 + 1) / (2 + 2 + 1)
    assert dice_loss(zero, t, 1.0).item() == pytest.approx(1 - 3 / 5)
    assert sigmoid_bce_loss(zero, t, 1.0).item() == pytest.approx(math.log(2))
    # Summed over masks, divided by num_masks.
    two = torch.cat([zero, zero])
    assert dice_loss(two, torch.cat([t, t]), 4.0).item() == pytest.approx(2 * 0.4 / 4)


def test_importance_sampling_prefers_boundary():
    gen = torch.Generator().manual_seed(0)
    # A linear ramp crossing 0 at x = 0.5: the most uncertain quarter of the
    # oversampled points lie within ~0.125 of the boundary.
    logits = (16.0 - torch.arange(32.0) - 0.5).expand(1, 1, 32, 32)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 200, 3.0, 0.75, gen)
    assert coords.shape == (1, 200, 2)
    near = ((coords[0, :150, 0] - 0.5).abs() < 0.15).float().mean()
    assert near > 0.95
    # The random quarter is spread out.
    assert (coords[0, 150:, 0] - 0.5).abs().max() > 0.3


def test_total_loss_decreases_when_optimising_free_logits():
    torch.manual_seed(0)
    targets = make_targets([3, 2], size=32)
    logits = torch.randn(2, 6, K + 1, requires_grad=True)
    mask_logits = torch.randn(2, 6, 16, 16, requires_grad=True)
    crit = make_criterion()
    opt = torch.optim.Adam([logits, mask_logits], lr=0.2)
    first = None
    for _ in range(40):
        loss = crit([{"logits": logits, "mask_logits": mask_logits}], targets)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = crit([{"logits": logits, "mask_logits": mask_logits}], targets)["loss"].item()
    assert last < 0.5 * first


def test_gradients_flow_only_to_predictions():
    targets = make_targets([2, 0])
    logits = torch.randn(2, 4, K + 1, requires_grad=True)
    mask_logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    unrelated = torch.randn(3, requires_grad=True)
    indices = HungarianMatcher(num_points=64)(logits, mask_logits, targets)
    assert all(not p.requires_grad and not g.requires_grad for p, g in indices)
    out = make_criterion(num_points=64)([{"logits": logits, "mask_logits": mask_logits}], targets)
    out["loss"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert mask_logits.grad is not None and mask_logits.grad[0].abs().sum() > 0
    # Image 1 has no gt: its mask logits get no mask-loss gradient.
    assert mask_logits.grad[1].abs().sum() == 0
    assert unrelated.grad is None
    assert not targets[0]["masks"].requires_grad


def test_empty_batch_loss_is_class_only_and_connected():
    targets = make_targets([0, 0])
    logits = torch.randn(2, 3, K + 1, requires_grad=True)
    mask_logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = make_criterion(num_points=64)([{"logits": logits, "mask_logits": mask_logits}], targets)
    assert out["loss_mask_0"].item() == 0 and out["loss_dice_0"].item() == 0
    out["loss"].backward()
    assert mask_logits.grad is not None


def test_deep_supervision_terms():
    targets = make_targets([2, 1])
    preds = [
        {"logits": torch.randn(2, 5, K + 1, requires_grad=True), "mask_logits": torch.randn(2, 5, 8, 8)}
        for _ in range(3)
    ]
    out = make_criterion(num_points=64, class_weight=10.0)(preds, targets)
    expected = {f"loss_{n}_{i}" for n in ("class", "mask", "dice") for i in range(3)} | {"loss"}
    assert set(out) == expected
    total = sum(v for k, v in out.items() if k != "loss")
    assert torch.allclose(out["loss"], total)
    out["loss"].backward()
    assert all(p["logits"].grad is not None for p in preds)


def test_class_weight_scales_class_term():
    targets = make_targets([2])
    preds = [{"logits": torch.randn(1, 4, K + 1), "mask_logits": torch.randn(1, 4, 8, 8)}]
    a = make_criterion(num_points=64, class_weight=2.0)(preds, targets)["loss_class_0"]
    gen = torch.Generator().manual_seed(0)
    crit = SetCriterion(K, HungarianMatcher(class_weight=2.0, num_points=64, generator=gen), class_weight=10.0,
                        num_points=64, generator=gen)
    b = crit(preds, targets)["loss_class_0"]
    assert b.item() == pytest.approx(5 * a.item(), rel=1e-5)


@pytest.mark.parametrize("bad", [-1, K + 1])
def test_invalid_labels_raise(bad):
    targets = [{"labels": torch.tensor([1, bad]), "masks": torch.zeros(2, 8, 8, dtype=torch.bool)}]
    preds = [{"logits": torch.randn(1, 3, K + 1), "mask_logits": torch.randn(1, 3, 8, 8)}]
    with pytest.raises(ValueError, match="1-based"):
        make_criterion(num_points=16)(preds, targets)
    zero = [{"labels": torch.tensor([1, 0]), "masks": torch.zeros(2, 8, 8, dtype=torch.bool)}]
    with pytest.raises(ValueError, match="1-based"):  # the matcher sees objects only
        HungarianMatcher(num_points=16)(preds[0]["logits"], preds[0]["mask_logits"], zero)


def test_known_background_makes_the_rest_unknown_to_the_losses():
    """A mask labelled 0 is what the painting says is background: with one, pixels outside every mask
    are unknown; points there give no mask loss, and an unmatched query lying on them no class loss.
    Without one, the losses are exactly as before (everything known)."""
    torch.manual_seed(0)
    obj = torch.zeros(1, 32, 32, dtype=torch.bool)
    obj[0, 4:12, 4:12] = True
    background = torch.zeros(1, 32, 32, dtype=torch.bool)
    background[0, :, 20:] = True  # known background: the right third; the middle is unknown
    preds = [{"logits": torch.randn(1, 3, K + 1), "mask_logits": torch.randn(1, 3, 8, 8)}]
    plain = [{"labels": torch.tensor([1]), "masks": obj}]
    painted = [{"labels": torch.tensor([1, 0]), "masks": torch.cat([obj, background])}]
    everything = [{"labels": torch.tensor([1, 0]), "masks": torch.cat([obj, ~obj])}]  # complete: nothing unknown
    crit = make_criterion(num_points=64)
    losses = {name: crit(preds, t, generator=torch.Generator().manual_seed(1)) for name, t in
              (("plain", plain), ("painted", painted), ("everything", everything))}
    for k in ("loss_class_0", "loss_mask_0", "loss_dice_0"):
        assert torch.equal(losses["plain"][k], losses["everything"][k]), k
    assert not torch.equal(losses["plain"]["loss_mask_0"], losses["painted"]["loss_mask_0"])
    # A query whose mask lies on the unknown middle is not taught "no object" there.
    from model.training.losses import split_background, unknown_shares, unmatched_on_unknown

    on_unknown = torch.full((1, 3, 8, 8), -10.0)
    on_unknown[0, 2, :, 2:4] = 10.0  # query 2 covers columns 8..15: unknown pixels only
    on_unknown[0, 1, :, 6:8] = 10.0  # query 1 covers the known background
    _, known = split_background(painted)
    ignored = unmatched_on_unknown(on_unknown, [(torch.tensor([0]), torch.tensor([0]))], unknown_shares(known, (8, 8)))
    assert ignored.tolist() == [[False, False, True]]
    assert unmatched_on_unknown(on_unknown, [(torch.tensor([0]), torch.tensor([0]))], [None]) is None


def test_wrong_logit_width_raises():
    targets = make_targets([1])
    preds = [{"logits": torch.randn(1, 3, K), "mask_logits": torch.randn(1, 3, 8, 8)}]
    with pytest.raises(ValueError, match="no-object"):
        make_criterion(num_points=16)(preds, targets)


def test_default_point_count_runs():
    targets = make_targets([3], size=64)
    preds = [{"logits": torch.randn(1, 10, K + 1), "mask_logits": torch.randn(1, 10, 16, 16)}]
    crit = SetCriterion(K, HungarianMatcher())
    out = crit(preds, targets)
    assert torch.isfinite(out["loss"])


def test_no_object_weight_scales_only_unmatched_no_object_targets():
    from model.training.losses import CLASS_LOSS_SCALE, SetCriterion, sigmoid_focal_loss
    from model.training.matcher import HungarianMatcher

    logits = torch.randn(1, 3, 4)  # 3 queries, 3 classes + no-object
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}]
    indices = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))]
    plain = SetCriterion(3, HungarianMatcher(), no_object_weight=1.0).class_loss(logits, targets, indices)
    weighted = SetCriterion(3, HungarianMatcher(), no_object_weight=0.1).class_loss(logits, targets, indices)
    onehot = torch.zeros(1, 3, 4)
    onehot[..., 3] = 1
    per_entry = sigmoid_focal_loss(logits, onehot, reduction="none")
    expected = (per_entry[..., :3].sum() + 0.1 * per_entry[..., 3].sum()) / per_entry.numel() * CLASS_LOSS_SCALE
    assert torch.allclose(plain, per_entry.mean() * CLASS_LOSS_SCALE)
    assert torch.allclose(weighted, expected)
