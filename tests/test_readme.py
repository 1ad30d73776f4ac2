"""The README's and docs/'s commands, run as written on a small real sample in the competition's layout, so
they cannot drift. Every shell command in README.md and docs/*.md is either run here or named in
COVERED_ELSEWHERE (with where it runs); a new command that is neither fails the first test. Also: the quick
start stays on the README's first screen, the docs index and links resolve, inline `make` targets and repo
paths exist.

What the walk changes, and only that: ``DATA=`` points at the sample instead of ``/kaggle/input``, training
gets SPEED (1 epoch of 2 steps at 64 px) and the fold loops run WALK_FOLDS of the 5, so the walk takes a
minute or two, not hours.
"""

import json
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
DOCS = REPO / "docs"
MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]
KAGGLE_INPUT = "/kaggle/input/aptos2019-blindness-detection"
FIRST_SCREEN = 60  # lines from the top of README.md to the quick start's first command
SPEED_TRAIN_PM = " -p epochs 1 -p max_steps_per_epoch 2 -p size 64 -p batch_size 4 -p num_workers 0"
SPEED_TRAIN_CLI = (" --set epochs=1 --set max_steps_per_epoch=2 --set size=64 --set batch_size=4"
                   " --set num_workers=0")
SPEED_PY = {"epochs=8))": "epochs=1, max_steps_per_epoch=2, size=64, batch_size=4, num_workers=0))"}
WALK_FOLDS = (0, 1)  # the README's loops train every fold; the walk trains these two
FOLD_LOOP = re.compile(r"^for fold in ([\d ]+); do$")

# command prefix -> where it runs instead of here
COVERED_ELSEWHERE = {
    "make demo": "the demo itself",
    "make test": "CI",
    "python -m kaggle_utils.run configs/demo.yaml": "make demo (with --budget-hours / --overwrite: run.main flags)",
    "python -m kaggle_utils.run configs/kaggle_quickstart.yaml": "its --plan runs here (the config is valid); the "
                                                                 "full chain is make demo's and tests/test_run.py's",
    "python build_kernel.py outputs/demo/runs/lite0": "make kernel (tests/test_kernel.py builds and verifies)",
    "cd outputs/kernel_bundle && kaggle": "Kaggle's own CLI, needs credentials and the network",
    "python -m kaggle_utils.run configs/aptos_cpu.yaml --plan --measure": "tests/test_measure.py measures a small "
                                                                          "config (the APTOS data is not on every "
                                                                          "machine); exit statuses there too",
    "python build_kernel.py --train configs/kaggle_quickstart.yaml": "tests/test_kernel_train.py runs it as written "
                                                                     "(the offline smoke run included)",
    "python build_kernel.py --train configs/kaggle_gpu.yaml": "tests/test_kernel_train.py and "
                                                              "tests/test_kaggle_client.py build it (with --attach "
                                                              "and --weights-dataset); its --verify is the quick "
                                                              "start's, on four models",
    "python build_kernel.py outputs/kaggle_train": "tests/test_kernel_train.py, on the smoke run's own output: as "
                                                   "written, and with --kernel-source --verify",
    "cd outputs/train_bundle_kaggle_quickstart && kaggle": "Kaggle's own CLI, needs credentials and the network",
    "kaggle kernels output": "Kaggle's own CLI, needs credentials and the network",
}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _blocks(lang: str, paths: list[Path] = MARKDOWN) -> list[str]:
    return [b for p in paths for b in re.findall(rf"```{lang}\n(.*?)```", _text(p), flags=re.S)]


def _commands(block: str) -> list[str]:
    """Shell lines with continuations joined and trailing comments dropped."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(re.sub(r"\s+", " ", line))
    return out


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _quickstart_blocks() -> tuple[str, str, str]:
    """The config route, the by-hand route and its fold loop without papermill."""
    config, by_hand, by_file = re.findall(r"```bash\n(.*?)```", _section(_text(README), "## Kaggle quick start"),
                                          flags=re.S)
    return config, by_hand, by_file


def _walk(cmds: list[str], speed: str, trains: str) -> list[str]:
    """The commands as the walk runs them: SPEED on every training line, WALK_FOLDS in every fold loop."""
    out = []
    for c in cmds:
        loop = FOLD_LOOP.match(c)
        if loop:
            assert [int(f) for f in loop.group(1).split()] == [0, 1, 2, 3, 4], f"{c!r}: not every fold of 5"
            c = f"for fold in {' '.join(map(str, WALK_FOLDS))}; do"
        elif c.startswith(trains):
            c += speed
        out.append(c)
    return out


def test_every_readme_and_docs_command_is_run_somewhere():
    config, by_hand, by_file = _quickstart_blocks()
    here = {_commands(config)[0], *_commands(by_hand), *_commands(by_file)}  # what the tests below run
    stray = [c for block in _blocks("bash") for c in _commands(block)
             if c not in here and not any(c.startswith(p) for p in COVERED_ELSEWHERE)]
    assert not stray, f"README/docs commands no test runs: {stray}; run them in tests/test_readme.py or name them"
    assert len(_blocks("python")) == 1  # docs/architecture.md's Python API snippet, run below


def test_quick_start_is_on_the_first_screen():
    """What it is, the two commands and the quick start's first command within FIRST_SCREEN lines."""
    lines = _text(README).splitlines()
    quick = lines.index("## Kaggle quick start")
    fence = next(i for i in range(quick, len(lines)) if lines[i] == "```bash")
    first = next(i for i in range(fence + 1, len(lines)) if lines[i].strip() and not lines[i].startswith("#"))
    assert lines[first].startswith("python -m kaggle_utils.run") and first + 1 <= FIRST_SCREEN, \
        f"README.md:{first + 1}: the quick start's first command must be within {FIRST_SCREEN} lines of the top"
    assert lines.index("## Two commands") < quick and "make demo" in "\n".join(lines[:quick])


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_docs_index_and_links_resolve():
    index = _section(_text(README), "## More")
    assert DOCS.is_dir() and len(MARKDOWN) > 1
    unlisted = [p.name for p in MARKDOWN[1:] if f"](docs/{p.name})" not in index]
    assert not unlisted, f"docs pages missing from the README's index (## More): {unlisted}"
    broken = []
    for page in MARKDOWN:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text(page)):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md":
                heads = {_anchor(h) for h in re.findall(r"^#+ (.+)$", _text(dest), flags=re.M)}
                if anchor not in heads:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, f"links that lead nowhere: {broken}"


def test_inline_make_targets_and_repo_paths_exist():
    """`make X` in the prose names a Makefile target; `configs/...`, `bench/...` and the like are real files."""
    targets = set(re.findall(r"^([\w-]+):", _text(REPO / "Makefile"), flags=re.M))
    missing = []
    for page in MARKDOWN:
        for code in re.findall(r"`([^`\n]+)`", _text(page)):
            words = code.split()
            named = [w for w in words[1:] if "=" not in w and w != "..."] if words[0] == "make" else []
            if named and named[0] not in targets:  # `make PYTHON=python3.11 ...` names none
                missing.append(f"{page.name}: {code}")
            path = re.fullmatch(r"((?:configs|bench|tests|notebooks|weights|wheels|docs|data/sample)/[\w./-]+)", code)
            if path and not (REPO / path.group(1)).exists():
                missing.append(f"{page.name}: {code}")
    assert not missing, f"named in the README/docs but not in the repo: {missing}"


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
    config, _, _ = _quickstart_blocks()
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
    """Every step by hand, training through the notebook; then the same folds from the fold file, which must
    find them finished: the notebook's parameters and configs/fold_example.yaml are the same TrainConfig."""
    data, work, test_ids = competition_layout
    _, by_hand, by_file = _quickstart_blocks()
    cmds = _walk(_commands(by_hand), SPEED_TRAIN_PM, "papermill notebooks/train.ipynb")
    assert cmds[0] == f"DATA={KAGGLE_INPUT}"
    cmds[0] = f"DATA={data}"
    assert any(c.startswith("for fold in") for c in cmds), "the by-hand route trains every fold in a loop"
    cmds = [c + " -p gradcam_per_grade 0" if c.startswith("papermill notebooks/blend.ipynb") else c for c in cmds]
    done = _sh("\n".join(cmds), work)
    out = work / "outputs" / "aptos"
    assert "Passed unknown parameter" not in done.stderr and "IProgress not found" not in done.stderr
    folds = pd.read_csv(out / "cache256" / "folds.csv", dtype={"id": str})
    assert len(folds) == 20 and folds["fold"].nunique() == 5
    runs = out / "runs" / "lite0"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [f"fold{f}" for f in WALK_FOLDS]
    sub = pd.read_csv(out / "blend" / "submission.csv", dtype={"id_code": str})
    assert sub["id_code"].tolist() == test_ids and sub["diagnosis"].between(0, 4).all()
    assert pd.read_csv(out / "preds" / "failed_images.csv").empty
    assert (out / "kernel_bundle" / "dataset" / "manifest.json").is_file()

    trained = {f: {n: (runs / f"fold{f}" / n).stat().st_mtime_ns for n in ("best.pt", "last.pt")} for f in WALK_FOLDS}
    again = _sh("\n".join(_walk(_commands(by_file), SPEED_TRAIN_CLI, "python -m kaggle_utils.training")), work)
    results, text = [], again.stdout.strip()
    while text:
        result, end = json.JSONDecoder().raw_decode(text)
        results.append(result)
        text = text[end:].strip()
    assert [(r["status"], r["resumed"]) for r in results] == [("completed", True)] * len(WALK_FOLDS), results
    assert {f: {n: (runs / f"fold{f}" / n).stat().st_mtime_ns for n in ("best.pt", "last.pt")}
            for f in WALK_FOLDS} == trained  # nothing retrained, nothing rewritten
