"""Training/evaluation transforms: image and masks stay aligned, seeds reproduce, empty masks go."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from model.data import augment as A
from model.data import transforms as T
from model.data.augment import AugmentConfig

COLOURS = torch.tensor([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10], [10, 250, 250]], dtype=torch.uint8)


def scene(h=48, w=64):
    """An image of flat colour regions and its target: mask i is exactly the pixels of COLOURS[i]."""
    regions = torch.zeros(h, w, dtype=torch.int64)
    regions[: h // 3] = 1
    regions[h // 2 : h - 4, 5:20] = 2
    regions[10:30, 40:58] = 3
    regions[h - 3 :, w - 4 :] = 4  # small, in the bottom-right corner
    image = COLOURS[regions].permute(2, 0, 1).contiguous()
    masks = torch.stack([regions == i for i in range(5)])
    return image, {"labels": torch.tensor([3, 1, 4, 2, 5]), "masks": masks}


def colour_index(image):
    """Each pixel's nearest colour in COLOURS; -1 where it is the padding grey."""
    d = ((image.permute(1, 2, 0)[..., None, :].float() - COLOURS.float()) ** 2).sum(-1)
    idx = d.argmin(-1)
    idx[(image == 128).all(0)] = -1
    return idx


def train_transform(config: AugmentConfig, seed: int | None = None) -> T.TrainTransform:
    """A TrainTransform whose `__call__` draws its seeds from a private generator (`seed`)."""
    return T.TrainTransform(config, None if seed is None else torch.Generator().manual_seed(seed))


GEOMETRIC = AugmentConfig(scale_range=(0.6, 1.7), crop_size=(40, 50), flip_prob=0.5, pad_size=(40, 50))


@pytest.mark.parametrize("seed", range(6))
def test_masks_follow_the_image_through_scale_crop_flip_pad(seed):
    image, target = scene()
    out, t = train_transform(GEOMETRIC).apply(image, target, seed)
    assert out.shape == (3, 40, 50) and out.dtype == torch.uint8
    assert t["masks"].shape[1:] == (40, 50) and t["masks"].dtype == torch.bool
    idx = colour_index(out)
    covered = t["masks"].any(0)
    assert not covered[idx == -1].any()  # padding has no target
    assert (t["masks"].sum(0) <= 1).all()
    for label, mask in zip(t["labels"].tolist(), t["masks"]):
        i = [3, 1, 4, 2, 5].index(label)
        interior = torch.from_numpy(ndimage.binary_erosion(mask.numpy(), iterations=2))
        assert (idx[interior] == i).all()  # away from edges, bilinear colours are exact
        agree = (idx[mask] == i).float().mean()
        assert agree > 0.8, (label, agree)
    # Only boundary pixels may disagree.
    real = idx != -1
    labels_map = torch.full(idx.shape, -1)
    for label, mask in zip(t["labels"].tolist(), t["masks"]):
        labels_map[mask] = [3, 1, 4, 2, 5].index(label)
    assert (labels_map[real] == idx[real]).float().mean() > 0.95


def test_flip_and_crop_without_resize_are_exact():
    image, target = scene()
    for seed in range(4):
        out, t = train_transform(AugmentConfig(crop_size=(30, 33), flip_prob=0.5)).apply(image, target, seed)
        assert out.shape == (3, 30, 33)
        idx = colour_index(out)
        for label, mask in zip(t["labels"].tolist(), t["masks"]):
            assert torch.equal(mask, idx == [3, 1, 4, 2, 5].index(label))
    out, t = train_transform(AugmentConfig(flip_prob=1.0)).apply(image, target, 0)
    assert torch.equal(out, image.flip(-1)) and torch.equal(t["masks"], target["masks"].flip(-1))


def test_same_seed_same_result_other_seeds_differ():
    image, target = scene()
    tf = train_transform(A.ade_panoptic())
    torch.manual_seed(1)
    a_img, a_t = tf.apply(image, target, 123)
    global_state = torch.random.get_rng_state()
    b_img, b_t = tf.apply(image, target, 123)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # the global RNG is not used
    assert torch.equal(a_img, b_img) and torch.equal(a_t["masks"], b_t["masks"])
    assert torch.equal(a_t["labels"], b_t["labels"])
    assert tf.params((48, 64), 123) == tf.params((48, 64), 123)
    others = {tf.params((48, 64), s) for s in range(1, 20)}
    assert len(others) == 19  # every seed draws a different augmentation
    c_img, _ = tf.apply(image, target, 124)
    assert c_img.shape != a_img.shape or not torch.equal(c_img, a_img)


def test_call_draws_seeds_from_its_generator():
    image, target = scene()
    one, two = train_transform(A.scenes(), 7), train_transform(A.scenes(), 7)
    outs = [one(image, target)[0] for _ in range(3)]
    assert all(torch.equal(a, two(image, target)[0]) for a in outs)
    assert not torch.equal(outs[0], outs[1])


def test_augmentation_seed_is_stable_and_distinct():
    seeds = {T.augmentation_seed(0, i, e) for i in range(50) for e in range(4)}
    assert len(seeds) == 200
    assert T.augmentation_seed(3, 5, 1) == T.augmentation_seed(3, 5, 1)
    assert T.augmentation_seed(3, 5, 1) != T.augmentation_seed(4, 5, 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_masks_emptied_by_the_crop_are_dropped_with_their_labels():
    image, target = scene()
    tf = train_transform(AugmentConfig(crop_size=(20, 20)))
    dropped = set()
    for seed in range(30):
        _, t = tf.apply(image, target, seed)
        assert len(t["labels"]) == len(t["masks"]) and t["masks"].flatten(1).any(1).all()
        top, left, h, w = tf.params((48, 64), seed).crop
        cropped = target["masks"][:, top : top + h, left : left + w]
        present = cropped.flatten(1).any(1)
        assert t["labels"].tolist() == target["labels"][present].tolist()
        assert torch.equal(t["masks"], cropped[present])
        dropped |= set(target["labels"][~present].tolist())
    assert dropped >= {1, 5}  # the top band and the corner segment were each cropped away at least once


def test_overlapping_masks_are_transformed_one_by_one():
    image, target = scene()
    masks = target["masks"].clone()
    masks[0] |= masks[2]  # overlap: the packed fast path cannot be used
    tf = train_transform(GEOMETRIC)
    for seed in range(3):
        _, t = tf.apply(image, {"labels": target["labels"], "masks": masks}, seed)
        singles = []
        for label, m in zip(target["labels"], masks):
            _, s = tf.apply(image, {"labels": label[None], "masks": m[None]}, seed)
            singles.extend(zip(s["labels"].tolist(), s["masks"]))
        assert t["labels"].tolist() == [lab for lab, _ in singles]
        assert all(torch.equal(a, b) for a, (_, b) in zip(t["masks"], singles))


def test_presets():
    image, target = scene(40, 60)
    out, t = train_transform(A.ade_panoptic()).apply(image, target, 0)
    assert out.shape == (3, 640, 640) and t["masks"].shape[1:] == (640, 640)
    p = A.ade_panoptic()
    assert p.short_sides[0] == 320 and p.short_sides[-1] == 1280 and len(p.short_sides) == 16
    sizes = {T.sample_params(p, (40, 60), s).resize[0] for s in range(60)}
    assert sizes <= set(p.short_sides) and len(sizes) > 5
    coco = train_transform(A.coco_panoptic())
    assert coco.apply(image, target, 0)[0].shape == (3, 800, 1200)
    assert coco.params((40, 100), 0).resize == (533, 1333)
    params = coco.params((40, 100), 0)
    assert params.crop is None and params.pad is None and params.brightness is None
    out, t = train_transform(A.scenes()).apply(image, target, 5)
    assert out.shape == image.shape and t["masks"].shape[1:] == (40, 60)
    out, t = train_transform(A.none()).apply(image, target, 5)
    assert torch.equal(out, image) and torch.equal(t["masks"], target["masks"])


def test_colour_jitter_changes_colours_not_geometry():
    image, target = scene()
    cfg = dataclasses.replace(A.ade_panoptic(), short_sides=(), crop_size=None, pad_size=None, flip_prob=0.0)
    changed = 0
    for seed in range(5):
        out, t = train_transform(cfg).apply(image, target, seed)
        assert torch.equal(t["masks"], target["masks"])
        changed += not torch.equal(out, image)
        for m in t["masks"]:  # a flat region stays flat
            assert (out[:, m] == out[:, m][:, :1]).all()
    assert changed >= 3


def test_test_transform_resizes_short_side():
    image, target = scene(40, 60)
    out, t = T.test_transform(80)(image, target)
    assert out.shape == (3, 80, 120) and t["masks"].shape == (5, 80, 120)
    assert torch.equal(t["masks"], target["masks"].repeat_interleave(2, 1).repeat_interleave(2, 2))
    out, none = T.test_transform(20, max_size=25)(image)
    assert out.shape == (3, 17, 25) and none is None
    assert T.short_side_size(480, 640, 640, 2560) == (640, 853)


def test_bad_input_is_refused():
    image, target = scene()
    tf = train_transform(GEOMETRIC)
    with pytest.raises(ValueError, match="uint8 tensor"):
        tf.apply(image.float(), target, 0)
    with pytest.raises(ValueError, match="uint8 tensor"):
        tf.apply(image[:1], target, 0)
    with pytest.raises(ValueError, match="masks must be"):
        tf.apply(image, {"labels": target["labels"], "masks": target["masks"][:, :10]}, 0)
    with pytest.raises(ValueError, match="labels must be"):
        tf.apply(image, {"labels": target["labels"][:2], "masks": target["masks"]}, 0)
    with pytest.raises(ValueError, match="not both"):
        AugmentConfig(short_sides=(10,), scale_range=(1.0, 2.0))
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig(flip_prob=1.5)


def test_empty_target_and_numpy_image():
    image, _ = scene()
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 48, 64, dtype=torch.bool)}
    _, t = train_transform(GEOMETRIC).apply(image, empty, 3)
    assert t["masks"].shape == (0, 40, 50) and t["labels"].shape == (0,)
    hwc = image.permute(1, 2, 0).numpy()
    assert torch.equal(T.image_to_tensor(hwc), image)
    with pytest.raises(ValueError, match="uint8"):
        T.image_to_tensor(hwc.astype(np.float32))


def test_dihedral_gives_every_symmetry_of_a_square_and_leaves_other_draws_alone():
    image, target = scene(48, 48)
    config = AugmentConfig(dihedral=True)
    seen = set()
    for seed in range(40):
        out, t = train_transform(config).apply(image, target, seed)
        idx = colour_index(out)
        for label, mask in zip(t["labels"].tolist(), t["masks"]):
            assert torch.equal(mask, idx == [3, 1, 4, 2, 5].index(label))  # masks follow exactly
        seen.add(out.numpy().tobytes())
    assert len(seen) == 4  # identity, vertical flip, transpose, both (with no horizontal flip drawn)
    with_flip = dataclasses.replace(GEOMETRIC, dihedral=True)
    for seed in range(5):  # the other draws do not move when the dihedral draw is added
        a, b = T.sample_params(GEOMETRIC, (48, 64), seed), T.sample_params(with_flip, (48, 64), seed)
        assert dataclasses.replace(b, vertical_flip=False, transpose=False) == a
    wide, wide_target = scene(40, 60)
    for seed in range(8):  # no transpose on a non-square canvas: the shape stays
        out, t = train_transform(AugmentConfig(dihedral=True)).apply(wide, wide_target, seed)
        assert out.shape == wide.shape and t["masks"].shape[1:] == (40, 60)
    assert A.learn().dihedral and not A.scenes().dihedral


class _OneImage:
    """A dataset of one image: flat colour regions, each a segment of the given dataset categories."""

    def __init__(self, categories):
        image, target = scene(40, 60)
        self.regions = target["masks"].int().argmax(0).numpy()
        self.categories = categories

    def __len__(self):
        return 1

    def __getitem__(self, index):
        from model.data.coco_panoptic import PanopticSample

        image = COLOURS[torch.from_numpy(self.regions)].numpy()
        ids = self.regions.astype(np.int64) + 1
        segments = [{"id": i + 1, "category_id": c, "iscrowd": 0} for i, c in enumerate(self.categories)]
        return PanopticSample(image, ids, segments, 0)


@pytest.mark.parametrize("name,shape", [("ade-panoptic-100-5", (640, 640)), ("ade-semantic-100-5", (512, 512)),
                                        ("coco-panoptic-83-5", (800, 1200)), ("scenes-16-8", (40, 60))])
def test_each_scenario_trains_with_its_own_augmentation(name, shape):
    """The bench's training samples go through the scenario's augmentation: the published crop or
    resize, masks that follow the image, the same sample for the same seed."""
    from model.data.scenarios import get_scenario
    from model.data.training_set import StepTrainingSet

    scenario = get_scenario(name)
    categories = list(scenario.step_classes(0)[:5])
    data = StepTrainingSet(_OneImage(categories), scenario, scenario.augment, keep=None)
    image, target = data.sample(0, 7)
    assert tuple(image.shape) == (3, *shape) and tuple(target["masks"].shape[1:]) == shape
    again = data.sample(0, 7)
    assert torch.equal(image, again[0]) and torch.equal(target["masks"], again[1]["masks"])
    others = [data.sample(0, s)[0] for s in range(8, 12)]
    assert any(o.shape != image.shape or not torch.equal(o, image) for o in others)
    if scenario.augment.brightness == 0:  # no colour jitter: every pixel keeps its region's colour
        idx = colour_index(image)
        blur = 2 + 2 * -(-shape[0] // 40)  # an upscale blurs edges over about its factor in pixels
        checked = 0
        for label, mask in zip(target["labels"].tolist(), target["masks"]):
            region = [scenario.learning_id(c) for c in categories].index(label)
            interior = torch.from_numpy(ndimage.binary_erosion(mask.numpy(), iterations=blur))
            assert (idx[interior] == region).all()
            checked += bool(interior.any())
        assert checked >= 3
    else:  # jitter changes colours, not where the regions are: the masks still tile the image's regions
        covered = target["masks"].any(0)
        assert covered.float().mean() > 0.3 and (target["masks"].sum(0) <= 1).all()
