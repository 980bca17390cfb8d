"""The reference README's deterministic weight rule: official state dicts built from the manifests."""

import json
import zlib

import numpy as np
import torch


def deterministic_tensor(key: str, shape, init_kind: str) -> torch.Tensor:
    z = np.random.default_rng(zlib.crc32(key.encode("utf-8"))).standard_normal(shape)
    if init_kind == "fan_in":
        z = z / np.sqrt(np.prod(shape[1:]))
    elif init_kind == "embedding":
        pass
    elif init_kind == "norm_weight":
        z = 1 + 0.1 * z
    elif init_kind in ("norm_bias", "bias", "running_mean"):
        z = 0.1 * z
    elif init_kind == "running_var":
        z = 1 + 0.1 * np.abs(z)
    else:
        raise ValueError(f"unknown init kind {init_kind!r} for {key}")
    return torch.from_numpy(z.astype(np.float32))


def official_state_dict(manifest_path) -> dict[str, torch.Tensor]:
    manifest = json.loads(open(manifest_path).read())
    return {key: deterministic_tensor(key, shape, kind) for key, shape, _, _, kind, _ in manifest["entries"]}
