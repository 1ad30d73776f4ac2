"""The README's commands, run as written on a small real sample in the competition's layout, so the README
cannot drift. Every shell command in the README is either run here or named in COVERED_ELSEWHERE (with where
it runs); a new command that is neither fails the first test.

What the walk changes, and only that: ``DATA=`` points at the sample instead of ``/kaggle/input``, and training
gets SPEED (1 epoch of 2 steps at 64 px) so the walk takes a minute, not hours.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
KAGGLE_INPUT = "/kaggle/input/aptos2019-blindness-detection"
SPEED_TRAIN_PM = " -p epochs 1 -p max_steps_per_epoch 2 -p size 64 -p batch_size 4 -p num_workers 0"
SPEED_TRAIN_CLI = (" --set epochs=1 --set max_steps_per_epoch=2 --set size=64 --set batch_size=4"
                   " --set num_workers=0")
SPEED_PY = {"epochs=8))": "epochs=1, max_steps_per_epoch=2, size=64, batch_size=4, num_workers=0))"}

# command prefix -> where it runs instead of here
COVERED_ELSEWHERE = {
    "make demo": "the demo itself",
    "make test": "CI",
    "python -m kaggle_utils.run configs/demo.yaml": "make demo (with --budget-hours / --overwrite: run.main flags)",
    "python build_kernel.py outputs/demo/runs/lite0": "make kernel (tests/test_kernel.py builds and verifies)",
    "cd outputs/kernel_bundle && kaggle": "Kaggle's own CLI, needs credentials and the network",
}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _commands(block: str) -> list[str]:
    """Shell lines with continuations joined and trailing comments dropped."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(re.sub(r"\s+", " ", line))
    return out


def _quickstart_blocks() -> tuple[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Kaggle quick start"):text.index("## Kaggle submission bundle")]
    config, by_hand = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return config, by_hand


def test_every_readme_command_is_run_somewhere():
    config, by_hand = _quickstart_blocks()
    here = set(_commands(config) + _commands(by_hand))
    stray = [c for block in _blocks("bash") for c in _commands(block)
             if c not in here and not any(c.startswith(p) for p in COVERED_ELSEWHERE)]
    assert not stray, f"README commands no test runs: {stray}; run them in tests/test_readme.py or name them"
    assert len(_blocks("python")) == 1  # the "Using it" snippet, run below


@pytest.fixture(scope="module")
def competition_layout(tmp_path_factory, sample_dir):
    """train.csv + train_images/*.png (20 IDRiD photographs) and test.csv + test_images/*.png (4 more plus a
    real APTOS photograph when ../shared/data is here): PNG like the competition's."""
    root = tmp_path_factory.mktemp("readme")
    data = root / "input"
    labels = pd.read_csv(sample_dir / "labels.csv")
    train, test = labels.iloc[:20], labels.iloc[20:24]
    for part, rows in (("train", train), ("test", test)):
        (data / f"{part}_images").mkdir(parents=True)
        for i in rows["id_code"]:
            cv2.imwrite(str(data / f"{part}_images" / f"{i}.png"), cv2.imread(str(sample_dir / "images" / f"{i}.jpg")))
    train[["id_code", "diagnosis"]].to_csv(data / "train.csv", index=False)
    test_ids = test["id_code"].tolist()
    aptos = REPO.parent / "shared" / "data" / "raw" / "aptos_000c1434d8d7.png"
    if aptos.is_file():
        shutil.copy(aptos, data / "test_images" / "000c1434d8d7.png")
        test_ids.append("000c1434d8d7")
    pd.DataFrame({"id_code": test_ids}).to_csv(data / "test.csv", index=False)
    work = root / "work"  # commands use repo-relative notebooks/ and configs/; outputs/ lands here
    work.mkdir()
    for name in ("notebooks", "configs", "build_kernel.py"):
        (work / name).symlink_to(REPO / name)
    return data, work, test_ids


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def _sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"README commands failed:\n{script}\n--- stdout\n{done.stdout[-3000:]}\n" \
                                 f"--- stderr\n{done.stderr[-5000:]}"
    return done


@pytest.mark.slow
def test_python_snippet_runs_as_a_script(competition_layout):
    data, _, _ = competition_layout
    code = _blocks("python")[0]
    for old, new in SPEED_PY.items():
        assert old in code
        code = code.replace(old, new)
    code += '\n    print("THRESHOLDS", [round(float(t), 2) for t in thresholds], type(model).__name__)\n'
    (data / "snippet.py").write_text(code)
    out = _sh(f"{sys.executable} snippet.py", data).stdout
    assert "THRESHOLDS [" in out and (data / "cache256" / "folds.csv").is_file()
    folds = pd.read_csv(data / "cache256" / "folds.csv")
    assert len(folds) == 20 and sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_quick_start_config_route_checks_and_plans(competition_layout, tmp_path):
    data, work, _ = competition_layout
    config, _ = _quickstart_blocks()
    cfg = yaml.safe_load((REPO / "configs" / "kaggle_quickstart.yaml").read_text())
    text = (REPO / "configs" / "kaggle_quickstart.yaml").read_text().replace(KAGGLE_INPUT, str(data))
    text = text.replace(cfg["workdir"], str(tmp_path / "aptos"))
    local = tmp_path / "kaggle_quickstart.yaml"
    local.write_text(text)
    plan_cmd = _commands(config)[0]
    assert plan_cmd.endswith("--plan")
    out = _sh(plan_cmd.replace("configs/kaggle_quickstart.yaml", str(local)), work).stdout
    for step in ("preprocess:cache0", "train:lite0:fold4", "infer", "blend"):
        assert step in out
    # the full chain is what `make demo` runs (on another config); here the config itself must be valid


@pytest.mark.slow
def test_quick_start_by_hand_route_runs_as_written(competition_layout):
    data, work, test_ids = competition_layout
    _, by_hand = _quickstart_blocks()
    cmds = _commands(by_hand)
    assert cmds[0] == f"DATA={KAGGLE_INPUT}"
    cmds[0] = f"DATA={data}"
    for k, c in enumerate(cmds):
        if c.startswith("papermill notebooks/train.ipynb"):
            cmds[k] = c + SPEED_TRAIN_PM
        elif c.startswith("python -m kaggle_utils.training"):
            cmds[k] = c + SPEED_TRAIN_CLI
        elif c.startswith("papermill notebooks/blend.ipynb"):
            cmds[k] = c + " -p gradcam_per_grade 0"
    done = _sh("\n".join(cmds), work)
    out = work / "outputs" / "aptos"
    assert "Passed unknown parameter" not in done.stderr and "IProgress not found" not in done.stderr
    folds = pd.read_csv(out / "cache256" / "folds.csv", dtype={"id": str})
    assert len(folds) == 20 and folds["fold"].nunique() == 5
    for fold in (0, 1):
        assert (out / "runs" / "lite0" / f"fold{fold}" / "best.pt").is_file()
    sub = pd.read_csv(out / "blend" / "submission.csv", dtype={"id_code": str})
    assert sub["id_code"].tolist() == test_ids and sub["diagnosis"].between(0, 4).all()
    assert pd.read_csv(out / "preds" / "failed_images.csv").empty
    assert (out / "kernel_bundle" / "dataset" / "manifest.json").is_file()
