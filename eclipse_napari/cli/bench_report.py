"""Results of `python -m eclipse_napari.bench`: JSON, a paper-style text table and a PQ-per-step plot."""

import math
from dataclasses import asdict
from pathlib import Path


def _pct(value) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 100:5.1f}"


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
        "settings": {k: (v if not hasattr(v, "__dataclass_fields__") else asdict(v)) for k, v in asdict(settings).items()},
        "world_size": world_size,
        "seconds": results.get("seconds"),
        "base": results["base"],
        "methods": methods,
        "paper_deltas": list(scenario.deltas),
    }
    if "eclipse_paper_deltas" in results:
        data["eclipse_paper_deltas"] = results["eclipse_paper_deltas"]
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


def format_table(data: dict) -> str:
    base_old = data["base"]["pq"]["old"]["pq"]
    lines = [
        f"{data['scenario']}: {data['num_base']} base classes + {data['num_steps']} step(s) of {data['increment']}; "
        f"PQ after the last step (old = base classes, new = later ones)",
        f"{'method':<24}{'PQ old':>8}{'PQ new':>8}{'PQ all':>8}{'trainable/step':>16}{'s/step':>9}{'peak MiB':>10}",
        f"{'base model (step 0)':<24}{_pct(base_old):>8}{'':>8}{'':>8}",
    ]
    finals = {}
    for method, records in data["methods"].items():
        last = records[-1]
        finals[method] = last["pq"]
        seconds = sum(r["seconds"] for r in records) / len(records)
        label = method if method != "eclipse" else f"ECLIPSE (delta {data['settings']['delta']})"
        lines.append(
            f"{label:<24}{_pct(last['pq']['old']['pq']):>8}{_pct(last['pq']['new']['pq']):>8}"
            f"{_pct(last['pq']['all']['pq']):>8}{last['trainable_parameters']:>16,}{seconds:>9.0f}"
            f"{last['peak_memory_mib']:>10.0f}"
        )
    if "eclipse_paper_deltas" in data:
        pq = data["eclipse_paper_deltas"]
        lines.append(f"{'ECLIPSE (paper deltas)':<24}{_pct(pq['old']['pq']):>8}{_pct(pq['new']['pq']):>8}"
                     f"{_pct(pq['all']['pq']):>8}   deltas {data['paper_deltas']}")
    if "eclipse" in data["methods"]:
        last = data["methods"]["eclipse"][-1]
        lines.append(f"ECLIPSE deltas used: {[round(d, 2) for d in last['deltas']]}")
    ratios = []
    if "eclipse" in finals and base_old:
        ratios.append(f"ECLIPSE old / base old = {finals['eclipse']['old']['pq'] / base_old * 100:.0f}%")
    if "eclipse" in finals and "joint" in finals and finals["joint"]["new"]["pq"]:
        ratios.append(f"ECLIPSE new / joint new = {finals['eclipse']['new']['pq'] / finals['joint']['new']['pq'] * 100:.0f}%")
    if "finetune" in finals and base_old:
        ratios.append(f"fine-tune old / base old = {finals['finetune']['old']['pq'] / base_old * 100:.0f}%")
    if ratios:
        lines.append("; ".join(ratios))
    return "\n".join(lines)


def plot_pq(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    base_old = data["base"]["pq"]["old"]["pq"]
    for ax, group in zip(axes, ("old", "new", "all")):
        for method, records in data["methods"].items():
            steps = [r["step"] for r in records]
            values = [100 * (r["pq"][group]["pq"] or 0.0) for r in records]
            if group in ("old", "all") and method != "joint":
                steps, values = [0] + steps, [100 * base_old] + values
            ax.plot(steps, values, marker="o", label=method)
        ax.set_title(f"PQ {group}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PQ")
    axes[0].legend()
    fig.suptitle(data["scenario"])
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
