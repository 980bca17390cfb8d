"""`python -m eclipse_napari.bench` end to end on a tiny generated dataset, alone and under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eclipse_napari.cli.bench import main
from model.io.model_files import load_model
from model.network.build import build_model
from model.network.config import tiny_config

TINY = ["--scenes", "24", "6", "--scenes-size", "64", "--backbone", "tiny", "--base-iterations", "3",
        "--iterations", "2", "--batch-size", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scenes")


def test_bench_end_to_end(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--data-root", str(data_root), "--train-base", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "ECLIPSE (delta auto)" in printed and "finetune" in printed and "joint" in printed
    assert "ECLIPSE (old own no-obj)" in printed, "the trained model merged with old groups' own no-object"
    data = json.loads((out / "results.json").read_text())
    assert data["scenario"] == "scenes-16-8" and data["world_size"] == 1
    assert set(data["methods"]) == {"eclipse", "finetune", "joint"}
    eclipse, finetune = data["methods"]["eclipse"][-1], data["methods"]["finetune"][-1]
    assert eclipse["trainable_parameters"] < finetune["trainable_parameters"] / 5
    assert len(eclipse["deltas"]) == 2 and eclipse["delta_table"], "delta is chosen automatically"
    for group in ("old", "new", "all"):
        assert group in eclipse["pq"] and group in data["eclipse_own_no_object"]
    assert (out / "pq_per_step.png").stat().st_size > 1000
    assert (out / "results.txt").read_text().startswith("scenes-16-8")
    model = load_model(out / "eclipse")
    assert model.num_steps == 1 and model.num_classes == 24
    # Every finished step was saved; a resumed run reloads them instead of training again.
    assert (out / "steps" / "eclipse_step001" / "record.json").exists()
    assert main(["--data-root", str(data_root), "--base", str(out / "base"), "--out", str(out), "--resume",
                 *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.count("resumed from") == 3
    again = json.loads((out / "results.json").read_text())
    assert again["methods"]["eclipse"][-1]["pq"] == eclipse["pq"]
    # Evaluate a saved model.
    assert main(["--data-root", str(data_root), "--eval-only", str(out / "eclipse"), "--max-eval-images", "2"]) == 0
    assert '"steps": 1' in capsys.readouterr().out


def test_bench_over_several_seeds_writes_each_and_the_spread(data_root, tmp_path, capsys):
    """--seeds: one full run per seed (its own results), then the mean and spread over them with the
    machine; the 95% line is judged on the mean, and the summary can say it is missed."""
    from eclipse_napari.cli.bench_report import format_summary

    out = tmp_path / "seeds"
    base = tmp_path / "base"
    assert main(["--data-root", str(data_root), "--train-base", "--base-only", "--out", str(base), *TINY]) == 0
    assert main(["--data-root", str(data_root), "--base", str(base / "base"), "--out", str(out), "--seeds", "0", "1",
                 "--methods", "eclipse", "joint", *TINY]) == 0
    runs = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [r["settings"]["seed"] for r in runs] == [0, 1] and all(r["machine"]["threads"] == 1 for r in runs)
    summary = json.loads((out / "summary.json").read_text())
    old = [r["methods"]["eclipse"][-1]["pq"]["old"]["pq"] for r in runs]
    assert summary["seeds"] == [0, 1] and summary["methods"]["eclipse"]["old"]["values"] == pytest.approx(old)
    assert summary["methods"]["eclipse"]["old"]["mean"] == pytest.approx(sum(old) / 2)
    text = (out / "summary.txt").read_text()
    assert "mean ± std" in text and "ECLIPSE deltas per seed" in text and "machine:" in text
    assert "ECLIPSE (old own no-obj)" in text and summary["eclipse_own_no_object"]["old"]["values"] == \
        pytest.approx([r["eclipse_own_no_object"]["old"]["pq"] for r in runs])
    # The verdict on the 95% line follows the mean, and says so when it is missed.
    summary["ratios"]["eclipse_old_over_base_old"] = 0.9
    assert "misses the 95% line" in format_summary(summary)
    summary["ratios"]["eclipse_old_over_base_old"] = 0.97
    assert "meets the 95% line" in format_summary(summary)


def test_bench_learns_the_classes_in_another_order(data_root, tmp_path, capsys):
    """--class-order descending: the classes in more training images come first (so the base classes
    change), a base is trained on them, and the results say which order ran; without --train-base the
    order is refused before anything trains."""
    from model.data.coco_panoptic import PanopticDataset  # noqa: F401 (the reader the bench uses)
    from model.data.scenarios import get_scenario, reorder_classes

    out = tmp_path / "descending"
    assert main(["--data-root", str(data_root), "--class-order", "descending", "--out", str(out), *TINY]) == 1
    assert "add --train-base" in capsys.readouterr().err and not out.exists()
    assert main(["--data-root", str(data_root), "--class-order", "descending", "--train-base", "--out", str(out),
                 "--methods", "eclipse", *TINY]) == 0
    data = json.loads((out / "results.json").read_text())
    given = get_scenario("scenes-16-8")
    assert data["scenario"] == "scenes-16-8-descending" and sorted(data["class_order"]) == sorted(given.class_order)
    assert data["class_order"] != list(given.class_order)
    base = load_model(out / "base")
    assert len(base.classes) == 16
    # The order is the training images' class frequency, descending; random orders follow their seed.
    annotations = {i: [{"category_id": 3}, {"category_id": 5}] for i in range(3)} | {9: [{"category_id": 5}]}
    reordered = reorder_classes(given, "descending", annotations)
    assert reordered.class_order[:2] == (5, 3) and reordered.class_order[2:] == tuple(
        c for c in given.class_order if c not in (3, 5))
    assert reorder_classes(given, "random", {}, 1).class_order == reorder_classes(given, "random", {}, 1).class_order
    assert reorder_classes(given, "random", {}, 1).class_order != reorder_classes(given, "random", {}, 2).class_order
    assert reorder_classes(given, "given", {}) is given


def test_bench_refuses_bad_requests(data_root, tmp_path, capsys):
    assert main(["--scenario", "nope-1-2"]) == 1
    assert "unknown scenario" in capsys.readouterr().err
    assert main(["--scenario", "ade-panoptic-100-5", "--out", str(tmp_path)]) == 1
    assert "--data-root" in capsys.readouterr().err


def test_bench_under_torchrun_with_two_gloo_processes(data_root, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "eclipse_napari.bench", "--data-root", str(data_root), "--train-base", "--device", "cpu",
           "--methods", "eclipse", "--out", str(out), *TINY]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["world_size"] == 2 and list(data["methods"]) == ["eclipse"]
    assert run.stdout.count("ECLIPSE (delta auto)") == 1, "only rank 0 reports"


def test_torchrun_ranks_average_gradients_and_stay_identical(tmp_path):
    """Each rank draws its own batches (so its own losses); with gradients averaged across ranks every
    rank takes the same step, so their weights stay equal. Without the all-reduce they would differ."""
    from safetensors.torch import load_file

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "tests" / "ddp_worker.py"), str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert not torch.equal(a.pop("losses"), b.pop("losses")), "the ranks must have seen different batches"
    torch.manual_seed(0)
    initial = build_model(tiny_config(), ["bar", "sky"], [True, False], backbone_weights="random").state_dict()
    trained = [k for k in a if not torch.equal(a[k], initial[k])]
    assert len(trained) > 10, "the weights must have moved"
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("args,message", [
    (["--delta", "0.5x"], "expected 'auto', 'paper' or a number"),
    (["--methods", "eclipse", "distill"], "invalid choice: 'distill'"),
    (["--iterations", "0"], "must be at least 1"),
    (["--step-lr", "0"], "must be above 0"),
    (["--eval-split", "test"], "invalid choice: 'test'"),
])
def test_bench_checks_its_options_before_anything_runs(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--scenario", "ade-panoptic-100-5", *args])  # would need data: nothing may have started
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_bench_options_parse_to_what_runs():
    from eclipse_napari.cli.bench import _given, build_parser

    args = build_parser().parse_args(["--delta", "-0.4", "--max-steps", "2"])
    assert args.delta == -0.4 and args.max_steps == 2
    assert build_parser().parse_args(["--delta", "Paper"]).delta == "paper"
    assert _given(0, 300) == 0 and _given(None, 300) == 300  # a given 0 is not "unset"


def test_tuning_split_is_for_the_scenes_only(capsys):
    assert main(["--scenario", "ade-panoptic-100-5", "--data-root", "/nonexistent", "--eval-split", "tune"]) == 1
    assert "no tuning split" in capsys.readouterr().err


def test_the_gpu_check_runs_end_to_end_in_its_cpu_smoke_mode(tmp_path):
    """benchmarks/gpu_check.py is run once a GPU machine is lent; its --smoke mode (CPU, tiny model) runs
    every part here (step 0, step t, torchrun with 2 processes, one Learn) so the script is ready."""
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--smoke", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=root,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["check"] for r in rows] == ["step 0 training", "step t training", "torchrun, 2 processes",
                                          "Learn (prompt step)"]
    assert all(r["it_per_s"] > 0 for r in rows) and "ranks identical: True" in rows[2]["note"]
    assert rows[1]["trainable"] < rows[0]["trainable"] / 5
    assert "GPU check on CPU (smoke)" in (tmp_path / "results.txt").read_text()
    no_gpu = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=root)
    if not torch.cuda.is_available():
        assert no_gpu.returncode == 1 and "no CUDA device" in no_gpu.stderr
