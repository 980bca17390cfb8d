"""Model configurations: one typed dataclass and a builder function per named configuration."""

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    hidden_dim: int = 128
    num_queries: int = 100
    num_heads: int = 8
    decoder_layers: int = 6
    decoder_ffn_dim: int = 512
    pixel_decoder_layers: int = 3
    pixel_decoder_ffn_dim: int = 512
    deform_points: int = 4

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> "ModelConfig":
        known = {f.name for f in fields(ModelConfig)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return ModelConfig(**data)


def default_config() -> ModelConfig:
    """The CPU-friendly default: EfficientNet-Lite0, width 128, 3 deformable layers, 6 decoder layers
    (two rounds over the three levels); about 5.5M parameters, a base file of about 22 MB."""
    return ModelConfig()


def paper_config(backbone: str = "resnet50", num_queries: int = 100) -> ModelConfig:
    """Structurally identical to the published ECLIPSE / Mask2Former R50 model."""
    return ModelConfig(
        backbone=backbone,
        hidden_dim=256,
        num_queries=num_queries,
        num_heads=8,
        decoder_layers=9,
        decoder_ffn_dim=2048,
        pixel_decoder_layers=6,
        pixel_decoder_ffn_dim=1024,
        deform_points=4,
    )


def tiny_config() -> ModelConfig:
    """A few-second model for tests."""
    return ModelConfig(
        backbone="tiny",
        hidden_dim=64,
        num_queries=16,
        num_heads=4,
        decoder_layers=3,
        decoder_ffn_dim=128,
        pixel_decoder_layers=1,
        pixel_decoder_ffn_dim=128,
        deform_points=2,
    )


CONFIGS = {"default": default_config, "paper": paper_config, "tiny": tiny_config}
# The configuration each backbone is built with (the ResNets in the paper's).
BACKBONE_CONFIGS = {"efficientnet_lite0": "default", "tiny": "tiny", "resnet50": "paper", "resnet101": "paper"}


def config_for_backbone(backbone: str, num_queries: int | None = None) -> ModelConfig:
    """The named configuration of `backbone`, optionally with another number of base queries."""
    if backbone not in BACKBONE_CONFIGS:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONE_CONFIGS)}")
    config = replace(CONFIGS[BACKBONE_CONFIGS[backbone]](), backbone=backbone)
    return config if num_queries is None else replace(config, num_queries=num_queries)
