"""How much the frozen-feature cache saves per step-t training iteration (CPU, one run, ratios).

    python benchmarks/feature_cache.py [--size 512] [--threads 2] [--iterations 12] [--batch 2]

Trains a new step of the default model on synthetic images twice, interleaved: with the cache
(features of each (image, augmentation) pair computed once, then reused) and with the cache disabled
(backbone and pixel decoder recomputed under no_grad every iteration). Reports the median seconds per
iteration once the cache is warm, and their ratio.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Synthetic:
    def __init__(self, count: int, size: int):
        self.count, self.size = count, size

    def __len__(self):
        return self.count

    def sample(self, index, augmentation_seed):
        import torch

        g = torch.Generator().manual_seed(index * 1000 + augmentation_seed % 1000)
        s = self.size
        image = torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8)
        masks = torch.zeros(2, s, s, dtype=torch.bool)
        masks[0, s // 8 : s // 2, s // 8 : s // 2] = True
        masks[1, s // 2 :, :] = True
        return image, {"labels": torch.tensor([21, 22]), "masks": masks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from model.network.build import build_model
    from model.network.config import default_config
    from model.training.engine import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(default_config(), [f"c{i}" for i in range(20)], [True] * 20)
    model.add_step(["new_a", "new_b"], [True, False], 10)
    data = Synthetic(4, args.size)
    common = dict(iterations=10_000, batch_size=args.batch, lr=5e-4, augment_variants=2)
    cached = Trainer(model, data, TrainConfig(cache_mb=4096, **common))
    uncached = Trainer(model, data, TrainConfig(cache_mb=0, **common))
    # Warm the cache: every (image, variant) pair once.
    while cached.cache.misses < len(data) * 2 and cached.iteration < 100:
        cached.step()
    times = {"cached": [], "recomputed": []}
    for _ in range(args.iterations):
        for name, trainer in (("cached", cached), ("recomputed", uncached)):
            start = time.perf_counter()
            trainer.step()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"step-t iteration, default model, {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, "
          f"median of {args.iterations} interleaved iterations")
    print(f"  with the feature cache:      {med['cached'] * 1000:8.1f} ms  (cache: {len(cached.cache)} entries, "
          f"{cached.cache.nbytes / 2**20:.0f} MiB)")
    print(f"  recomputing frozen features: {med['recomputed'] * 1000:8.1f} ms")
    print(f"  speed-up: {med['recomputed'] / med['cached']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
