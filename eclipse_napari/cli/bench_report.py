"""Results of `python -m eclipse_napari.bench`: JSON, a paper-style text table and a plot per step, in the
scenario's metric (PQ, or mIoU for the semantic scenarios)."""

import math
from dataclasses import asdict
from pathlib import Path


def _pct(value) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 100:5.1f}"


# The trained ECLIPSE model merged otherwise (no training of their own): key in results -> table label.
ECLIPSE_VARIANTS = {
    "eclipse_paper_deltas": "ECLIPSE (paper deltas)",
    # old groups keep their own no-object verdict (`manipulate_logits`'s own_no_object), the run's deltas
    "eclipse_own_no_object": "ECLIPSE (old own no-obj)",
}


def results_json(scenario, settings, results: dict, world_size: int) -> dict:
    methods = {}
    for method, records in results["methods"].items():
        methods[method] = [asdict(r) for r in records]
    data = {
        "scenario": scenario.name,
        "dataset": scenario.dataset,
        "num_base": scenario.num_base,
        "increment": scenario.increment,
        "num_steps": scenario.num_steps,
        "task": scenario.task,
        "metric": scenario.metric,
        "class_order": list(scenario.class_order),  # dataset category ids, in learning order
        "test_size": scenario.test_size,  # evaluation resize (short side, max long side); None: native
        "settings": {k: (v if not hasattr(v, "__dataclass_fields__") else asdict(v)) for k, v in asdict(settings).items()},
        "world_size": world_size,
        "seconds": results.get("seconds"),
        "base": results["base"],
        "methods": methods,
        "paper_deltas": list(scenario.deltas),
    }
    for key in ECLIPSE_VARIANTS:
        if key in results:
            data[key] = results[key]
    return _clean(data)


def _clean(obj):
    """NaN -> None so the file is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _metric(data: dict) -> tuple[str, str]:
    """(key in the records, name in the table)."""
    metric = data.get("metric", "pq")
    return metric, "mIoU" if metric == "miou" else "PQ"


def _scores(record: dict, metric: str) -> dict:
    return record.get(metric) or {}


def format_table(data: dict) -> str:
    metric, name = _metric(data)
    base_old = data["base"][metric]["old"][metric]
    split = data["settings"].get("eval_split", "val")
    lines = [
        f"{data['scenario']}: {data['num_base']} base classes + {data['num_steps']} step(s) of {data['increment']}; "
        f"{name} after the last step on the {'tuning' if split == 'tune' else 'validation'} split "
        f"(old = base classes, new = later ones)",
        f"{'method':<24}{name + ' old':>9}{name + ' new':>9}{name + ' all':>9}{'trainable/step':>16}{'s/step':>9}"
        f"{'peak MiB':>10}",
        f"{'base model (step 0)':<24}{_pct(base_old):>9}{'':>9}{'':>9}",
    ]
    finals = {}
    for method, records in data["methods"].items():
        last = records[-1]
        finals[method] = scores = _scores(last, metric)
        seconds = sum(r["seconds"] for r in records) / len(records)
        label = method if method != "eclipse" else f"ECLIPSE (delta {data['settings']['delta']})"
        lines.append(
            f"{label:<24}{_pct(scores['old'][metric]):>9}{_pct(scores['new'][metric]):>9}"
            f"{_pct(scores['all'][metric]):>9}{last['trainable_parameters']:>16,}{seconds:>9.0f}"
            f"{last['peak_memory_mib']:>10.0f}"
        )
    for key, label in ECLIPSE_VARIANTS.items():
        if key in data:
            fixed = data[key]
            how = f"deltas {data['paper_deltas']}" if key == "eclipse_paper_deltas" else \
                "ECLIPSE's deltas; old groups keep their own no-object verdict"
            lines.append(f"{label:<24}{_pct(fixed['old'][metric]):>9}{_pct(fixed['new'][metric]):>9}"
                         f"{_pct(fixed['all'][metric]):>9}   {how}")
    if "eclipse" in data["methods"]:
        last = data["methods"]["eclipse"][-1]
        lines.append(f"ECLIPSE deltas used: {[round(d, 2) for d in last['deltas']]}")
    ratios = []
    if "eclipse" in finals and base_old:
        ratios.append(f"ECLIPSE old / base old = {finals['eclipse']['old'][metric] / base_old * 100:.0f}%")
    joint_new = finals.get("joint", {}).get("new", {}).get(metric)
    if "eclipse" in finals and joint_new:
        ratios.append(f"ECLIPSE new / joint new = {finals['eclipse']['new'][metric] / joint_new * 100:.0f}%")
    if "finetune" in finals and base_old:
        ratios.append(f"fine-tune old / base old = {finals['finetune']['old'][metric] / base_old * 100:.0f}%")
    if ratios:
        lines.append("; ".join(ratios))
    return "\n".join(lines)


def plot_pq(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, name = _metric(data)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    base_old = data["base"][metric]["old"][metric]
    for ax, group in zip(axes, ("old", "new", "all")):
        for method, records in data["methods"].items():
            steps = [r["step"] for r in records]
            values = [100 * (_scores(r, metric)[group][metric] or 0.0) for r in records]
            if group in ("old", "all") and method != "joint":
                steps, values = [0] + steps, [100 * base_old] + values
            ax.plot(steps, values, marker="o", label=method)
        ax.set_title(f"{name} {group}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(name)
    axes[0].legend()
    fig.suptitle(data["scenario"])
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def machine_info(device: str) -> dict:
    """What ran the benchmark: floats can round differently on another machine (see the README)."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "system": platform.platform(), "device": device}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summarize(runs: list[dict]) -> dict:
    """Mean, standard deviation, minimum and maximum over runs (one per seed) of every method's old /
    new / all score after the last step, and of the base's; the seeds' deltas; the ratios of the means."""
    import numpy as np

    metric, _ = _metric(runs[0])
    seeds = [r["settings"]["seed"] for r in runs]

    def stats(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        a = np.asarray(values, float)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                "min": float(a.min()), "max": float(a.max()), "values": [float(v) for v in a]}

    methods = {}
    for method in runs[0]["methods"]:
        finals = [_scores(r["methods"][method][-1], metric) for r in runs]
        methods[method] = {group: stats([f[group][metric] for f in finals]) for group in ("old", "new", "all")}
        methods[method]["seconds_per_step"] = stats(
            [sum(x["seconds"] for x in r["methods"][method]) / len(r["methods"][method]) for r in runs])
        methods[method]["trainable_parameters"] = runs[0]["methods"][method][-1]["trainable_parameters"]
        if method == "eclipse":
            methods[method]["deltas"] = [r["methods"][method][-1]["deltas"] for r in runs]
    summary = {
        "scenario": runs[0]["scenario"], "metric": metric, "seeds": seeds, "machine": runs[0].get("machine"),
        "eval_split": runs[0]["settings"].get("eval_split", "val"),
        "base": {"old": stats([r["base"][metric]["old"][metric] for r in runs])},
        "methods": methods,
    }
    for key in ECLIPSE_VARIANTS:
        if all(key in r for r in runs):
            summary[key] = {g: stats([r[key][g][metric] for r in runs]) for g in ("old", "new", "all")}
    base_old = summary["base"]["old"]["mean"]
    ratios = {}
    if "eclipse" in methods and base_old:
        ratios["eclipse_old_over_base_old"] = methods["eclipse"]["old"]["mean"] / base_old
        ratios["eclipse_old_over_base_old_per_seed"] = [
            e / b if b else None for e, b in zip(methods["eclipse"]["old"]["values"], summary["base"]["old"]["values"])]
    if "eclipse" in methods and "joint" in methods and methods["joint"]["new"]["mean"]:
        ratios["eclipse_new_over_joint_new"] = methods["eclipse"]["new"]["mean"] / methods["joint"]["new"]["mean"]
    summary["ratios"] = ratios
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a table: mean ± standard deviation (min..max) over the seeds."""
    name = "mIoU" if summary["metric"] == "miou" else "PQ"

    def cell(s):
        if s is None:
            return "-"
        return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} ({100 * s['min']:.1f}..{100 * s['max']:.1f})"

    machine = summary.get("machine") or {}
    lines = [f"{summary['scenario']}: {name} after the last step on the "
             f"{'tuning' if summary['eval_split'] == 'tune' else 'validation'} split, mean ± std (min..max) over "
             f"seeds {summary['seeds']}",
             f"machine: {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, torch "
             f"{machine.get('torch', '?')}, {machine.get('device', '?')}",
             f"{'method':<24}{name + ' old':>26}{name + ' new':>26}{name + ' all':>26}",
             f"{'base model (step 0)':<24}{cell(summary['base']['old']):>26}"]
    for method, m in summary["methods"].items():
        label = "ECLIPSE" if method == "eclipse" else method
        lines.append(f"{label:<24}{cell(m['old']):>26}{cell(m['new']):>26}{cell(m['all']):>26}")
    for key, label in ECLIPSE_VARIANTS.items():
        if key in summary:
            p = summary[key]
            lines.append(f"{label:<24}{cell(p['old']):>26}{cell(p['new']):>26}{cell(p['all']):>26}")
    if "eclipse" in summary["methods"]:
        lines.append("ECLIPSE deltas per seed: " + "; ".join(
            str([round(d, 2) for d in ds]) for ds in summary["methods"]["eclipse"]["deltas"]))
    r = summary["ratios"]
    parts = []
    if "eclipse_old_over_base_old" in r:
        per_seed = ", ".join("-" if v is None else f"{100 * v:.1f}%"
                             for v in r.get("eclipse_old_over_base_old_per_seed", []))
        verdict = "meets" if r["eclipse_old_over_base_old"] >= 0.95 else "misses"
        parts.append(f"ECLIPSE old / base old = {100 * r['eclipse_old_over_base_old']:.1f}% on the mean "
                     f"({verdict} the 95% line; per seed {per_seed})")
    if "eclipse_new_over_joint_new" in r:
        parts.append(f"ECLIPSE new / joint new = {100 * r['eclipse_new_over_joint_new']:.0f}% on the mean")
    lines += parts
    return "\n".join(lines)
