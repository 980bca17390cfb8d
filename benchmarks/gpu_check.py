"""The GPU check: what the paper's runs need from a CUDA machine, measured in one short run (< 8 minutes).

    python benchmarks/gpu_check.py                 # on a CUDA machine: paper R50 configuration, 640x640, batch 8, AMP
    python benchmarks/gpu_check.py --smoke         # CPU, tiny model, 64 px: checks the script itself (the test suite)

Measures, each on synthetic images (random weights: speed and memory depend on the structure and the
sizes, not on the weight values):
  1. step 0: training iterations of the whole model (iterations/s, peak GPU memory);
  2. step t: training iterations of one prompt step (10 prompts, 10 classes), frozen features computed
     every iteration as on a large dataset (no cache hits);
  3. torchrun: 2 processes training a step through torch.distributed (NCCL when there is a GPU per
     process; with one GPU, NCCL cannot put two ranks on one device, so the check uses gloo over the
     CUDA tensors and says so), checking both ranks end with identical weights;
  4. one Learn (the prompt step of the napari plugin) on 3 painted 512x512 images, on CUDA.
Prints one table and writes results.json and results.txt into --out.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import Example, LearnConfig, learn_class  # noqa: E402
from model.io.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from model.network.build import build_model  # noqa: E402
from model.network.config import paper_config, tiny_config  # noqa: E402
from model.training.criterion import LossConfig  # noqa: E402
from model.training.engine import TrainConfig, Trainer  # noqa: E402


class Shapes:
    """Synthetic training images: a few rectangles of random classes on noise."""

    def __init__(self, size: int, num_classes: int, first_class: int = 1, count: int = 16):
        self.size, self.num_classes, self.first_class, self.count = size, num_classes, first_class, count

    def __len__(self):
        return self.count

    def sample(self, index: int, augmentation_seed: int):
        g = torch.Generator().manual_seed(index * 7919 + augmentation_seed)
        s = self.size
        image = torch.randint(0, 255, (3, s, s), generator=g, dtype=torch.uint8)
        masks = torch.zeros(4, s, s, dtype=torch.bool)
        for k in range(4):
            y, x = (int(v) for v in torch.randint(0, s // 2, (2,), generator=g))
            masks[k, y : y + s // 3, x : x + s // 3] = True
            image[:, masks[k]] = 40 * (k + 1)
        labels = torch.randint(self.first_class, self.first_class + self.num_classes, (4,), generator=g)
        return image, {"labels": labels, "masks": masks}


def _settings(smoke: bool) -> dict:
    if smoke:
        return {"config": tiny_config(), "size": 64, "batch": 2, "iterations": 2, "warmup": 1, "learn_size": 64,
                "learn_iterations": 3, "points": 256, "device": "cpu"}
    return {"config": paper_config(), "size": 640, "batch": 8, "iterations": 20, "warmup": 2, "learn_size": 512,
            "learn_iterations": 100, "points": 12544, "device": "cuda"}


def _model(s: dict, device):
    torch.manual_seed(0)
    names = [f"class {k}" for k in range(100)]
    weights = "random" if s["config"].backbone.startswith("resnet") else None
    model = build_model(s["config"], names, [k % 3 != 0 for k in range(100)], backbone_weights=weights)
    return model.to(device)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_mib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None


def time_training(s: dict, step: int) -> dict:
    device = s["device"]
    model = _model(s, device)
    if step:
        model.add_step([f"new {k}" for k in range(10)], [True] * 10, 10)
    data = Shapes(s["size"], 10 if step else 100, 101 if step else 1)
    config = TrainConfig(iterations=s["iterations"] + s["warmup"], batch_size=s["batch"], lr=1e-4,
                         augment_variants=0, loss=LossConfig(num_points=s["points"]), amp=True)
    trainer = Trainer(model, data, config, device)
    for _ in range(s["warmup"]):  # kernels chosen, memory pools grown
        trainer.step()
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    for _ in range(s["iterations"]):
        trainer.step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"check": f"step {'t' if step else '0'} training", "iterations": s["iterations"],
            "it_per_s": s["iterations"] / seconds, "s_per_it": seconds / s["iterations"],
            "peak_mib": _peak_mib(device), "trainable": model.num_trainable_parameters(),
            "note": f"{s['size']}x{s['size']}, batch {s['batch']}, AMP {'on' if trainer.amp else 'off (CPU)'}"}


def time_learn(s: dict) -> dict:
    device = s["device"]
    model = _model(s, device).eval()
    size = s["learn_size"]
    rng = np.random.default_rng(0)
    examples = []
    for k in range(3):
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        instances = np.zeros((size, size), np.int32)
        instances[size // 8 + k : size // 2, size // 8 : size // 2] = 1
        instances[size // 2 + 4 :, size // 2 + 4 - k :] = 2
        image[instances > 0] = (230, 180, 30)
        examples.append(Example(image, instances, complete=True))
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = learn_class(model, "sun", True, examples, LearnConfig.prompts(iterations=s["learn_iterations"]),
                         device=device)
    seconds = time.perf_counter() - start
    return {"check": "Learn (prompt step)", "iterations": s["learn_iterations"],
            "it_per_s": s["learn_iterations"] / result.seconds, "s_per_it": result.seconds / s["learn_iterations"],
            "peak_mib": _peak_mib(device), "trainable": model.num_trainable_parameters(),
            "note": f"3 images {size}x{size}: {seconds:.1f} s in all, delta {result.delta}"}


def run_torchrun(s: dict, smoke: bool, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "--worker", str(out)] + (["--smoke"] if smoke else [])
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        return {"check": "torchrun, 2 processes", "iterations": 0, "it_per_s": None, "s_per_it": None,
                "peak_mib": None, "trainable": None, "note": "FAILED: " + run.stderr.strip().splitlines()[-1][:200]}
    report = json.loads((out / "worker.json").read_text())
    return {"check": "torchrun, 2 processes", "iterations": report["iterations"],
            "it_per_s": report["iterations"] / report["seconds"], "s_per_it": report["seconds"] / report["iterations"],
            "peak_mib": report["peak_mib"], "trainable": report["trainable"],
            "note": f"{report['backend']}{report['why']}; ranks identical: {report['identical']}; "
                    f"{seconds:.0f} s with start-up"}


def worker(out: Path, smoke: bool) -> None:
    """One rank of the torchrun check: a prompt step trained through the engine's gradient averaging."""
    import torch.distributed as dist

    s = _settings(smoke)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = not smoke and torch.cuda.is_available()
    backend, why = "gloo", " (CPU)"
    if cuda:
        if torch.cuda.device_count() >= 2:
            backend, why, device = "nccl", "", f"cuda:{local}"
        else:
            why, device = " over CUDA tensors (one GPU: NCCL needs a GPU per process)", "cuda:0"
        torch.cuda.set_device(device)
    else:
        device = "cpu"
    dist.init_process_group(backend)
    s = dict(s, device=device)
    model = _model(s, device)
    model.add_step([f"new {k}" for k in range(10)], [True] * 10, 10)
    config = TrainConfig(iterations=s["iterations"], batch_size=s["batch"] // 2 or 1, lr=1e-4, augment_variants=0,
                         loss=LossConfig(num_points=s["points"]))
    trainer = Trainer(model, Shapes(s["size"], 10, 101), config, device)
    trainer.step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(s["iterations"] - 1):
        trainer.step()
    _sync(device)
    seconds = time.perf_counter() - start
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters() if p.requires_grad])
    if backend == "gloo":
        flat = flat.cpu()  # gloo gathers CPU tensors
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if dist.get_rank() == 0:
        atomic_write_json(out / "worker.json", {
            "backend": backend, "why": why, "iterations": s["iterations"] - 1, "seconds": seconds,
            "identical": all(torch.equal(gathered[0], g) for g in gathered), "peak_mib": _peak_mib(device),
            "trainable": model.num_trainable_parameters()})
    dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, 64 px (checks the script itself)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.smoke)
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device here; run this on a GPU machine (or --smoke to check the script on CPU)",
              file=sys.stderr)
        return 1
    s = _settings(args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = [time_training(s, 0), time_training(s, 1), run_torchrun(s, args.smoke, args.out), time_learn(s)]
    device = torch.cuda.get_device_name() if s["device"] == "cuda" else "CPU (smoke)"
    lines = [f"GPU check on {device}, torch {torch.__version__} ({time.strftime('%Y-%m-%d')}), "
             f"{time.perf_counter() - start:.0f} s in all",
             f"{'check':<24}{'it/s':>8}{'s/it':>8}{'peak MiB':>10}{'trainable':>12}  note"]
    for r in rows:
        fmt = (lambda v, spec: "-" if v is None else format(v, spec))
        lines.append(f"{r['check']:<24}{fmt(r['it_per_s'], '.2f'):>8}{fmt(r['s_per_it'], '.3f'):>8}"
                     f"{fmt(r['peak_mib'], '.0f'):>10}{fmt(r['trainable'], ','):>12}  {r['note']}")
    table = "\n".join(lines)
    atomic_write_json(args.out / "results.json", {"device": device, "torch": torch.__version__, "rows": rows})
    atomic_write_text(args.out / "results.txt", table + "\n")
    print(table)
    return 0 if all(r["it_per_s"] is not None for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
