"""``--plan --measure`` (real steps timed on this machine, beside the FLOP estimate; exit 3 past the budget) and
``bench/gpu_check.py`` (without CUDA it says so and exits 0; its checks run here on the CPU with gloo)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kaggle_utils.run import __main__ as run_cli
from kaggle_utils.run import fixed_costs, measure

REPO = Path(__file__).resolve().parents[1]


def _config(sample_dir: Path, tmp_path: Path, **extra) -> dict:
    """Two models with the same speed settings (measured once) at a tiny size, hflip TTA, OOF TTA."""
    lite = {"model": "efficientnet-lite0", "pretrained": False, "size": 32}
    return {"workdir": str(tmp_path / "work"), "budget_hours": 1, "workers": 1,
            "data": {"source": "idrid", "csv": str(sample_dir / "labels.csv"), "images": str(sample_dir / "images"),
                     "holdout": 6},
            "preprocess": {"size": 48}, "folds": {"n_folds": 2, "seed": 0},
            "train": {"epochs": 1, "batch_size": 2, "num_workers": 0},
            "models": [{"name": "a", **lite}, {"name": "b", **lite, "folds": [0]}],
            "infer": {"tta": "hflip", "batch_size": 4, "oof_tta": True}, **extra}


def _write(cfg: dict, tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_measure_times_every_step_and_exits_3_past_the_budget(sample_dir, tmp_path, capsys):
    path = _write(_config(sample_dir, tmp_path), tmp_path)
    assert run_cli.main([str(path), "--plan", "--measure", "--budget-hours", "0.001"]) == 3
    out, err = capsys.readouterr()
    head, *lines = out.splitlines()
    assert "measured" in head.split() and head.index("P100") < head.index("measured")
    steps = {"preprocess:cache0", "train:a:fold0", "train:a:fold1", "train:b:fold0", "infer", "blend"}
    assert {line.split()[0] for line in lines if line.split() and line.split()[0] in steps} == steps
    assert len([line for line in lines if line.startswith("  train ")]) == 1  # a and b: one measurement
    assert "batch 2 bf16 channels_last" in out or "batch 2 fp32 channels_last" in out
    assert [line for line in lines if line.startswith("  infer ") and "TTA hflip" in line]
    assert [line for line in lines if line.startswith("  blend  start ") and "gradcam" in line and "report" in line]
    assert "OVER BUDGET" in err and "exceeds the 0.1m budget by" in err and "this CPU" in err
    assert not (tmp_path / "work").exists()  # measuring writes nothing into the workdir


def test_exit_status_follows_the_measured_total(sample_dir, tmp_path, monkeypatch, capsys):
    def fake(cfg, rows, facts, say=None):
        for row in rows:
            row["measured_s"] = 60.0
        facts["measured"] = {"device": "a fake GPU", "total_s": 60.0 * len(rows), "lines": ["(fake)"]}
        return facts["measured"]

    monkeypatch.setattr(measure, "measure", fake)
    path = _write(_config(sample_dir, tmp_path), tmp_path)
    assert run_cli.main([str(path), "--plan", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "fits: 6.0m measured on a fake GPU of a 1h00 budget" in out
    assert run_cli.main([str(path), "--plan", "--measure", "--budget-hours", "0.05"]) == 3
    assert "exceeds the 3.0m budget by 3.0m" in capsys.readouterr().err
    assert run_cli.main([str(path), "--measure"]) == 0  # --measure implies --plan


def test_blend_defaults_are_the_blend_notebooks():
    import papermill as pm

    params = pm.inspect_notebook(str(REPO / "notebooks" / "blend.ipynb"))
    defaults = {k: yaml.safe_load(params[k]["default"]) for k in fixed_costs.DEFAULTS}
    assert defaults == fixed_costs.DEFAULTS


def test_blend_is_measured_by_running_its_parts(sample_dir, tmp_path):
    pngs = [str(p) for p in sorted((sample_dir / "images").iterdir())][:4]
    runs = [{"name": "a", "model": "efficientnet-lite0", "head": "regression", "size": 32, "folds": 2}]
    work = {"params": {"gradcam_per_grade": 1, "prior_boot": 5, "shakeup_sims": 5}, "runs": runs, "n_oof": 60,
            "n_test": 20}
    parts = fixed_costs.measure_blend(work, pngs, tmp_path / "b")
    assert set(parts) == {"start", "fit", "gradcam", "report"} and all(v > 0 for v in parts.values())
    assert (tmp_path / "b" / "report.html").is_file()
    work["params"]["gradcam_per_grade"] = 0
    assert "gradcam" not in fixed_costs.measure_blend(work, pngs, tmp_path / "c")


def test_a_config_error_is_still_exit_status_2(sample_dir, tmp_path, capsys):
    path = _write(_config(sample_dir, tmp_path, modles=[]), tmp_path)
    assert run_cli.main([str(path), "--plan", "--measure"]) == 2
    assert "error:" in capsys.readouterr().err


def test_median_time_warms_up_and_takes_more_runs_when_they_are_cheap():
    calls = []
    median, runs = measure.median_time(lambda: calls.append(1), warmup=2, runs=3)
    assert runs == measure.MAX_STEPS and len(calls) == 2 + measure.MAX_STEPS and median >= 0


def test_speed_key_fills_in_training_defaults():
    assert measure.speed_key({"model": "efficientnet-lite0"}) == measure.speed_key(
        {"model": "efficientnet-lite0", "batch_size": 16, "size": 224, "lr": 0.1})
    assert measure.speed_key({"amp": True}) != measure.speed_key({"amp": False})


# ------------------------------------------------------------------------------------------ bench/gpu_check.py


def _gpu_check():
    if "gpu_check" not in sys.modules:  # registered first: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


def test_gpu_check_without_cuda_says_so_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here" in done.stdout


def test_gpu_check_names_the_p100_configs_architectures():
    from kaggle_utils.run.config import load_config

    archs = _gpu_check().architectures(load_config(REPO / "configs" / "kaggle_gpu.yaml", plan_only=True))
    assert [(a["model"], a["size"], a["batch_size"]) for a in archs] == [
        ("se_resnext50_32x4d", 320, 32), ("efficientnet-b2", 260, 32), ("efficientnet-b3", 300, 32),
        ("efficientnet-b4", 380, 16)]
    assert _gpu_check().fp32_peak("NVIDIA H100 80GB HBM3") == 66.9
    assert _gpu_check().fp32_peak("Tesla P100-PCIE-16GB") == 9.3


@pytest.mark.slow
def test_gpu_check_paths_run_on_the_cpu_with_gloo(sample_dir, tmp_path, capsys):
    """The script's own code, end to end on the CPU: only the CUDA-only checks (fp16, GradScaler,
    cudnn.benchmark) fail here."""
    import torch

    from kaggle_utils.run.config import load_config

    cfg = load_config(_config(sample_dir, tmp_path), plan_only=True)
    status, results = _gpu_check().run(cfg, torch.device("cpu"), "gloo", plan=False, world_of_two=True)
    assert status == 1 and len(results) == 1
    checks = results[0].checks
    assert {k for k, ok in checks.items() if not ok} == {"amp on", "cudnn.benchmark"}
    assert checks["DDP gloo epoch completed"] and checks["TTA predict finite"] and checks["channels_last"]
    assert checks["DDP gloo world size 2 completed"] and checks["GradScaler iff fp16"]
    assert results[0].step_s > 0 and results[0].ddp_step_s > 0 and results[0].planned_t4_s > 0
    assert "FAILED: amp on" in capsys.readouterr().out
