"""The papermill chain: every notebook runs with tiny parameters; budget and notebook pairing."""

import json
import shutil
from pathlib import Path

import jupytext
import pandas as pd
import pytest

from kaggle_utils.run import chain as run_chain
from kaggle_utils.run import config

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.py")))
def test_notebook_pairs_in_sync(name):
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    nb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    assert [(c.cell_type, c.source) for c in py.cells] == [(c.cell_type, c.source) for c in nb.cells], (
        f"notebooks/{name}.py and .ipynb differ: run `jupytext --sync notebooks/{name}.py`")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}.ipynb needs exactly one cell tagged 'parameters'"


def _config(sample_dir: Path, workdir: Path, test_dir: Path, train_csv: Path | None = None) -> dict:
    return {
        "workdir": str(workdir), "budget_hours": 1, "workers": 1,
        "data": {"source": "idrid", "csv": str(train_csv or sample_dir / "labels.csv"),
                 "images": str(sample_dir / "images")},
        "preprocess": {"size": 96},
        "folds": {"n_folds": 2, "seed": 0},
        "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "max_steps_per_epoch": 2, "progress": False},
        "models": [{"name": "lite0", "model": "efficientnet-lite0", "head": "regression", "pretrained": False,
                    "size": 64}],
        "test": {"csv": str(test_dir / "test.csv"), "images": str(test_dir / "test_images"), "ext": ".jpg"},
        "infer": {"tta": "hflip", "batch_size": 4, "workers": 1},
        "blend": {"gradcam_per_grade": 1},
        "pseudo": {"rounds": 1, "soft": True},
    }


@pytest.mark.slow
def test_chain_runs_every_notebook_and_submits_every_test_id(sample_dir, tmp_path):
    test_dir = tmp_path / "kaggle"
    (test_dir / "test_images").mkdir(parents=True)
    labels = pd.read_csv(sample_dir / "labels.csv")
    ids = labels["id_code"][::10].tolist()  # 6 test images over the grades, not used for training
    labels[~labels["id_code"].isin(ids)].to_csv(tmp_path / "train.csv", index=False)
    for i in ids:
        shutil.copy(sample_dir / "images" / f"{i}.jpg", test_dir / "test_images" / f"{i}.jpg")
    (test_dir / "test_images" / "corrupt.jpg").write_bytes(b"not an image at all")
    ids = [*ids, "corrupt"]
    pd.DataFrame({"id_code": ids}).to_csv(test_dir / "test.csv", index=False)

    work = tmp_path / "work"
    log = run_chain.run_chain(_config(sample_dir, work, test_dir, tmp_path / "train.csv"))
    assert set(log["steps"]) == {"preprocess:cache0", "train:lite0:fold0", "train:lite0:fold1", "infer", "blend",
                                 "pseudo:r1", "train:lite0:fold0:r1", "train:lite0:fold1:r1", "infer:r1", "blend:r1"}
    assert all(s["status"] == "ok" for s in log["steps"].values())
    for step in log["steps"].values():  # every executed notebook is saved beside the outputs
        assert Path(step["output"]).is_file()

    for blend_dir in (work / "blend", work / "blend_round1"):
        sub = pd.read_csv(blend_dir / "submission.csv", dtype={"id_code": str})
        assert sub["id_code"].tolist() == ids
        assert sub["diagnosis"].between(0, 4).all()
        assert (blend_dir / "report.html").is_file() and (blend_dir / "confusion.png").stat().st_size > 0
    failed = pd.read_csv(work / "preds" / "failed_images.csv")
    assert failed["id"].tolist() == ["corrupt"]
    pseudo = pd.read_csv(work / "pseudo_round1.csv")
    assert len(pseudo) == 6 and (pseudo["fold"] == -1).all() and pseudo["grade"].between(0, 4).all()
    assert (work / "runs_round1" / "lite0" / "fold0" / "best.pt").is_file()

    rerun = run_chain.run_chain(_config(sample_dir, work, test_dir, tmp_path / "train.csv"))
    assert rerun["steps"] == log["steps"]  # finished steps are skipped, not redone


def _empty_test_set(tmp_path: Path) -> Path:
    (tmp_path / "test_images").mkdir()
    (tmp_path / "test.csv").write_text("id_code\n")
    return tmp_path


def test_budget_exhausted_names_the_step(sample_dir, tmp_path):
    cfg = _config(sample_dir, tmp_path / "w", _empty_test_set(tmp_path))
    with pytest.raises(run_chain.BudgetExceeded, match="preprocess:cache0"):
        run_chain.run_chain(cfg, budget_s=0)


def test_cell_timeout_stops_and_names_the_step(sample_dir, tmp_path):
    cfg = _config(sample_dir, tmp_path / "w", _empty_test_set(tmp_path)) | {"cell_timeout_s": 1}
    with pytest.raises(run_chain.BudgetExceeded, match="preprocess:cache0.*ran out of time"):
        run_chain.run_chain(cfg)
    log = json.loads((tmp_path / "w" / run_chain.LOG_FILE).read_text())
    assert log["steps"]["preprocess:cache0"]["status"] == "timeout"


def test_config_errors_are_clear(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {csv: a, images: b}\nmodels: [{model: efficientnet-lite0}]\n")
    with pytest.raises(ValueError, match="unique 'name'"):
        config.load_config(p)


def test_rerun_skips_finished_steps_but_redoes_everything_after_a_changed_one(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_chain.Runner, "_execute", lambda self, step, params, out_nb, timeout: calls.append(step.name))
    steps = [run_chain.Step("a", "a", {"x": 1}), run_chain.Step("b", "b", {"y": 1}), run_chain.Step("c", "c", {"z": 1})]

    def chain(steps):
        runner = run_chain.Runner(tmp_path, budget_s=60, cell_timeout_s=60, reserve_s=0)
        for step in steps:
            runner.run(step)

    chain(steps)
    chain(steps)
    assert calls == ["a", "b", "c"]  # the second pass skipped all three
    steps[1] = run_chain.Step("b", "b", {"y": 2})
    chain(steps)
    assert calls == ["a", "b", "c", "b", "c"]  # b changed: b reruns, and c, which read b's outputs
