"""Backbones: shapes/strides, the bundled EfficientNet-Lite0 ImageNet weights, frozen BN, weight files."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

from model.network.backbones import (
    BACKBONE_NAMES,
    EfficientNetLiteBackbone,
    build_backbone,
    efficientnet_lite0_checkpoint_path,
    load_state_dict_file,
    map_state_dict_by_position,
)

H, W = 64, 96
EXPECTED_CHANNELS = {
    "efficientnet_lite0": {"res2": 24, "res3": 40, "res4": 112, "res5": 320},
    "resnet50": {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048},
    "resnet101": {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048},
    "tiny": {"res2": 16, "res3": 24, "res4": 32, "res5": 48},
}
IMAGENET_CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _weights_for(name):
    return "random" if name.startswith("resnet") else None


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_file_state():
    return load_state_dict_file(efficientnet_lite0_checkpoint_path())


def test_names():
    assert set(BACKBONE_NAMES) == set(EXPECTED_CHANNELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_CHANNELS))
def test_shapes_strides_and_attributes(name):
    torch.manual_seed(0)
    model = build_backbone(name, _weights_for(name))
    with torch.no_grad():
        out = model(torch.randn(2, 3, H, W))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    assert model.channels == EXPECTED_CHANNELS[name]
    for level, stride in zip(out, (4, 8, 16, 32)):
        assert out[level].shape == (2, model.channels[level], H // stride, W // stride)
        assert torch.isfinite(out[level]).all()
    assert model.size_divisibility == 32
    assert len(model.pixel_mean) == 3 and len(model.pixel_std) == 3
    assert all(1.0 < s < 255.0 for s in model.pixel_std)
    # No trainable-statistics batch norm may remain anywhere.
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50", "tiny"])
def test_train_and_eval_mode_give_identical_output(name):
    torch.manual_seed(0)
    model = build_backbone(name, _weights_for(name))
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        model.train()
        train_out = model(x)
        model.eval()
        eval_out = model(x)
    for level in train_out:
        assert torch.equal(train_out[level], eval_out[level]), level
    assert not any(b.requires_grad for b in model.buffers())


def test_efficientnet_normalisation_is_tf_style(lite0):
    assert lite0.pixel_mean == (127.5, 127.5, 127.5)
    assert lite0.pixel_std == (127.5, 127.5, 127.5)


def test_efficientnet_imagenet_weights_are_loaded(lite0, lite0_file_state):
    stem = lite0_file_state["_conv_stem.weight"]
    assert torch.equal(lite0.body.conv_stem.weight, stem)
    last = lite0_file_state["_blocks.15._project_conv.weight"]
    assert torch.equal(lite0.body.blocks[6][0].conv_pwl.weight, last)
    assert torch.equal(build_backbone("efficientnet_lite0", "imagenet").body.conv_stem.weight, stem)
    random = build_backbone("efficientnet_lite0", "random")
    assert not torch.equal(random.body.conv_stem.weight, stem)


def test_efficientnet_freezing_bn_keeps_the_output(lite0_file_state):
    model = EfficientNetLiteBackbone()
    model.load_checkpoint(lite0_file_state)
    model.eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        before = model(x)
        model.freeze_batch_norm()
        after = model(x)
    for level in before:
        # Frozen BN folds the statistics into scale/shift, so only float rounding differs.
        assert _rel_err(after[level], before[level]) < 5e-5, level
    with pytest.raises(RuntimeError, match="before freeze"):
        model.load_checkpoint(lite0_file_state)


def test_efficientnet_classifies_a_cat(lite0, lite0_file_state):
    """The full classifier, mapped by position from the same file, must see a cat: this
    proves the positional key mapping, and the backbone must share its features."""
    import timm
    from skimage.data import chelsea

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    full.load_state_dict(map_state_dict_by_position(lite0_file_state, full.state_dict()))

    img = torch.from_numpy(chelsea()).permute(2, 0, 1).float()[None]
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(lite0.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(lite0.pixel_std).view(1, 3, 1, 1)
    x = (img - mean) / std
    with torch.no_grad():
        top5 = full(x).topk(5).indices[0].tolist()
        feats = full.bn1(full.conv_stem(x))
        for stage in full.blocks:
            feats = stage(feats)
        res5 = lite0(x)["res5"]
    assert top5[0] in IMAGENET_CAT_CLASSES, top5
    assert sum(c in IMAGENET_CAT_CLASSES for c in top5) >= 3, top5
    torch.testing.assert_close(res5, feats, rtol=1e-4, atol=1e-4)


def test_efficientnet_bad_checkpoint_errors(tmp_path, lite0_file_state):
    with pytest.raises(FileNotFoundError):
        build_backbone("efficientnet_lite0", tmp_path / "nope.pth")
    state = dict(lite0_file_state)
    state["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="shape mismatches"):
        build_backbone("efficientnet_lite0", bad)
    state = dict(lite0_file_state)
    state.pop("_conv_stem.weight")
    torch.save(state, bad)
    with pytest.raises(ValueError, match="tensors but the model expects"):
        build_backbone("efficientnet_lite0", bad)


def test_resnet50_parameter_count_and_weight_policy():
    model = build_backbone("resnet50", "random")
    trainable = sum(p.numel() for p in model.parameters())
    frozen_affine = sum(b.numel() for n, b in model.named_buffers() if n.endswith((".weight", ".bias")))
    # torchvision resnet50 without fc: 23,508,032 weights, of which the 53,120 BN
    # affine values are buffers here because the norms are frozen.
    assert trainable + frozen_affine == 23_508_032
    assert trainable == 23_454_912
    assert not hasattr(model, "fc") and not hasattr(model, "avgpool")
    for weights in (None, "imagenet"):
        with pytest.raises(ValueError, match="random"):
            build_backbone("resnet50", weights)
    with pytest.raises(ValueError, match="random"):
        build_backbone("tiny", "imagenet")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet_state_dict_file_round_trips(tmp_path, suffix):
    torch.manual_seed(0)
    # A full torchvision classifier checkpoint (with fc and num_batches_tracked).
    reference = torchvision.models.resnet50(weights=None)
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics and affine
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    state = reference.state_dict()
    path = tmp_path / f"r50{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    model = build_backbone("resnet50", path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    reference.eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        ref = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        assert _rel_err(model(x)["res5"], ref) < 5e-5


def test_resnet_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("resnet50", tmp_path / "missing.pth")
    state = build_backbone("resnet50", "random").state_dict()
    state.pop("layer4.2.conv3.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "missing_key.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys: \['layer4.2.conv3.weight'\].*unexpected keys: \['extra.weight'\]"):
        build_backbone("resnet50", path)
    state.pop("extra.weight")
    state["layer4.2.conv3.weight"] = torch.zeros(2048, 512, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match="wrong shapes: .*layer4.2.conv3.weight"):
        build_backbone("resnet50", path)


def test_unknown_name():
    with pytest.raises(ValueError, match="valid names: efficientnet_lite0, resnet50, resnet101, tiny"):
        build_backbone("vit_huge")
