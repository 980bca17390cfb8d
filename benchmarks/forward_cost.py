"""Forward cost of the model on CPU: median time, peak memory, and the extra cost of each added step.

    python benchmarks/forward_cost.py [--threads 2] [--size 512] [--repeats 25] [--configs default paper]

For each configuration, models with 0..N continual steps (P prompts, C classes each; the paper's ADE
100-5 shape: P=10, C=5) are timed in interleaved rounds, so machine noise hits all of them alike, and
each step's cost is reported as a ratio to the base model measured in the same run. Peak memory is the
peak resident set size of a fresh subprocess that builds the model and runs the forward passes.
Results are printed as a table and written as JSON (--out).
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(config_name: str, steps: int, prompts: int, classes: int):
    import torch

    from model.network.build import build_model
    from model.network.config import CONFIGS

    torch.manual_seed(0)
    config = CONFIGS[config_name]()
    num_base = 100 if config_name == "paper" else 20
    weights = "random" if config.backbone.startswith("resnet") else None
    model = build_model(config, [f"base{i}" for i in range(num_base)], [i % 3 > 0 for i in range(num_base)],
                        backbone_weights=weights).eval()
    for t in range(steps):
        model.add_step([f"step{t}_{i}" for i in range(classes)], [True] * classes, prompts)
    return model


def measure_memory(args) -> None:
    """Child mode: build, run forward passes, print peak RSS in MiB."""
    import torch

    torch.set_num_threads(args.threads)
    model = build(args.configs[0], args.memory_child, args.prompts, args.classes)
    x = torch.randint(0, 256, (1, 3, args.size, args.size), dtype=torch.uint8)
    peak_build = _vm_kib("VmHWM") / 1024
    rss_model = _vm_kib("VmRSS") / 1024
    # Reset the peak (Linux: clear_refs 5) so the forward's own peak is not hidden by the build's.
    Path("/proc/self/clear_refs").write_text("5")
    with torch.inference_mode():
        for _ in range(3):
            model.infer(x)
    peak_forward = _vm_kib("VmHWM") / 1024
    print(json.dumps({"rss_after_build_mib": rss_model, "peak_rss_mib": max(peak_build, peak_forward),
                      "forward_peak_rss_mib": peak_forward}))


def _vm_kib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (this memory measurement needs Linux)")


def peak_memory(config_name: str, steps: int, args) -> dict:
    cmd = [sys.executable, __file__, "--configs", config_name, "--memory-child", str(steps), "--threads",
           str(args.threads), "--size", str(args.size), "--prompts", str(args.prompts), "--classes", str(args.classes)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_config(config_name: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    base = build(config_name, 0, args.prompts, args.classes)
    models = [base]
    for _ in range(args.steps):
        m = copy.deepcopy(models[-1])
        t = m.num_steps
        m.add_step([f"step{t}_{i}" for i in range(args.classes)], [True] * args.classes, args.prompts)
        models.append(m)
    x = torch.randint(0, 256, (1, 3, args.size, args.size), dtype=torch.uint8)
    times = [[] for _ in models]
    with torch.inference_mode():
        for m in models:  # warm-up
            m.infer(x)
        for _ in range(args.repeats):
            for i, m in enumerate(models):
                start = time.perf_counter()
                m.infer(x)
                times[i].append((time.perf_counter() - start) * 1000)
    medians = [statistics.median(t) for t in times]
    return {
        "config": config_name,
        "parameters": sum(p.numel() for p in base.parameters()),
        "median_ms_by_steps": medians,
        "extra_cost_per_step": [(medians[i] / medians[i - 1] - 1) for i in range(1, len(medians))],
        "extra_cost_vs_base": [(m / medians[0] - 1) for m in medians],
        # Least-squares slope over 0..N steps relative to the intercept: less noisy than single differences.
        "fitted_cost_per_step": _slope(medians) / (medians[0] if len(medians) < 2 else _intercept(medians)),
        "memory_base": peak_memory(config_name, 0, args),
        "memory_with_steps": peak_memory(config_name, args.steps, args),
    }


def _slope(values) -> float:
    if len(values) < 2:
        return 0.0
    n = len(values)
    mx, my = (n - 1) / 2, statistics.fmean(values)
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / sum((i - mx) ** 2 for i in range(n))


def _intercept(values) -> float:
    return statistics.fmean(values) - _slope(values) * (len(values) - 1) / 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["default", "paper"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        measure_memory(args)
        return 0
    results = [time_config(name, args) for name in args.configs]
    print(f"\n{args.size}x{args.size}, batch 1, CPU, {args.threads} threads, median of {args.repeats} interleaved runs")
    print("peak MiB = peak RSS of a fresh process (torch's libraries included); fwd MiB = forward's peak RSS minus RSS before it")
    print(f"{'config':<10}{'params':>12}{'base ms':>10}{'peak MiB':>10}{'fwd MiB':>9}  added steps (P={args.prompts}, C={args.classes}): ms, extra vs previous")
    for r in results:
        steps = "  ".join(
            f"+{i + 1}: {ms:.1f} ({extra * 100:+.1f}%)"
            for i, (ms, extra) in enumerate(zip(r["median_ms_by_steps"][1:], r["extra_cost_per_step"]))
        )
        print(f"{r['config']:<10}{r['parameters']:>12,}{r['median_ms_by_steps'][0]:>10.1f}"
              f"{r['memory_base']['peak_rss_mib']:>10.0f}"
              f"{r['memory_base']['forward_peak_rss_mib'] - r['memory_base']['rss_after_build_mib']:>9.0f}  {steps}")
        print(f"{'':<10}fitted cost per step: {r['fitted_cost_per_step'] * 100:+.1f}%; "
              f"peak RSS with {args.steps} steps: {r['memory_with_steps']['peak_rss_mib']:.0f} MiB")
    if args.out:
        from model.io.atomic import atomic_write_json

        atomic_write_json(args.out, {"settings": vars(args) | {"out": str(args.out)}, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
