"""Run by tests/test_bench.py under `torchrun --nproc_per_node=2` (gloo): a few training iterations of a
tiny model through the engine; every rank writes its parameters and its own losses to OUT/rank<r>."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from model.network.build import build_model
from model.network.config import tiny_config
from model.training.criterion import LossConfig
from model.training.engine import TrainConfig, train


class Bars:
    """Images with one bright bar whose place depends on the index (ranks draw different indices)."""

    def __len__(self):
        return 8

    def sample(self, index: int, augmentation_seed: int):
        image = torch.full((3, 64, 64), 60, dtype=torch.uint8)
        masks = torch.zeros(1, 64, 64, dtype=torch.bool)
        masks[0, 4 + 6 * index : 12 + 6 * index, 8:56] = True
        image[:, masks[0]] = 230
        return image, {"labels": torch.tensor([1]), "masks": masks}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = build_model(tiny_config(), ["bar", "sky"], [True, False], backbone_weights="random")
    config = TrainConfig(iterations=3, batch_size=1, lr=1e-3, loss=LossConfig(num_points=256), augment_variants=0)
    result = train(model, Bars(), config)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors["losses"] = torch.tensor(result.losses)
    save_file(tensors, str(out / f"rank{rank}.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
