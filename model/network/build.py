"""Builds an EclipseModel (step 0, base classes only) from a ModelConfig."""

from .backbones import build_backbone
from .classes import make_classes
from .config import ModelConfig
from .decoder import MaskedAttentionDecoder
from .eclipse import EclipseModel
from .pixel_decoder import PixelDecoder
from .query_groups import QueryGroup


def build_model(config: ModelConfig, class_names, is_thing, colors=None, backbone_weights=None) -> EclipseModel:
    """A base model for the given classes. `backbone_weights` goes to `build_backbone` ("random" for an
    explicit random init, a file path, or None for the backbone's shipped default where one exists)."""
    backbone = build_backbone(config.backbone, backbone_weights)
    pixel_decoder = PixelDecoder(
        backbone.channels,
        hidden_dim=config.hidden_dim,
        mask_dim=config.hidden_dim,
        num_layers=config.pixel_decoder_layers,
        ffn_dim=config.pixel_decoder_ffn_dim,
        num_heads=config.num_heads,
        num_points=config.deform_points,
    )
    decoder = MaskedAttentionDecoder(
        config.hidden_dim, config.num_heads, config.decoder_ffn_dim, config.decoder_layers, num_levels=3
    )
    classes = make_classes(class_names, is_thing, colors)
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate class names: {sorted({n for n in names if names.count(n) > 1})}")
    decoder.groups.append(
        QueryGroup(config.num_queries, config.hidden_dim, classes, num_position_sets=1, owns_no_object_head=True)
    )
    model = EclipseModel(config, backbone, pixel_decoder, decoder)
    model.freeze_for_training()
    return model
