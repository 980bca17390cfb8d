"""Test helpers: one training forward of a model and its loss, outside the engine."""

import torch

from model.network.eclipse import EclipseModel
from model.training.criterion import pad_targets, predictions_from_features
from model.training.losses import SetCriterion


def training_predictions(model: EclipseModel, images: torch.Tensor, features=None, deep_supervision: bool = True):
    """Predictions of the group being learned: a list of {"logits", "mask_logits"} (deep supervision)."""
    x, _ = model.preprocess(images)
    if features is None:
        frozen = not any(p.requires_grad for p in model.pixel_decoder.parameters())
        with torch.set_grad_enabled(not frozen and torch.is_grad_enabled()):
            features = model.encode(x)
    return predictions_from_features(model, features, deep_supervision), tuple(x.shape[-2:])



def compute_loss(model: EclipseModel, criterion: SetCriterion, images: torch.Tensor, targets: list[dict], **kw):
    """Loss dict for a batch; targets: [{"labels": 1-based class ids, "masks": bool [M,H,W]}]."""
    preds, padded_size = training_predictions(model, images, **kw)
    return criterion(preds, pad_targets(targets, padded_size))
