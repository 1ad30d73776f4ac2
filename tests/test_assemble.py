"""Several sources in one chain: cross-source duplicates, patient groups, two-stage training, --plan."""

import json
from pathlib import Path

import pandas as pd
import pytest

from kaggle_utils.data import assemble
from kaggle_utils.run import __main__ as run_cli
from kaggle_utils.run import chain

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
needs_shared = pytest.mark.skipif(not (SHARED / "idrid_train").is_dir(), reason="../shared/data not present")


def _external_csvs(sample_dir: Path, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """An IDRiD external set of 16 photographs not in the sample plus 2 that are (planted duplicates: the
    sample holds resized copies of the same photographs), and 12 EyePACS eyes of 6 patients."""
    sample_ids = set(pd.read_csv(sample_dir / "labels.csv")["id_code"])
    idrid = pd.read_csv(SHARED / "idrid_train" / "labels.csv")
    others = idrid[~idrid["id_code"].isin(sample_ids)].groupby("diagnosis").head(4).head(16)
    planted = idrid[idrid["id_code"].isin(sorted(sample_ids)[:2])]
    ext = pd.concat([others, planted])
    ext[["id_code", "diagnosis"]].to_csv(tmp_path / "idrid_ext.csv", index=False)
    eye = pd.read_csv(SHARED / "eyepacs1024" / "trainLabels.csv")
    eye["patient"] = eye["image"].str.rsplit("_", n=1).str[0]
    both = eye.groupby("patient").filter(lambda g: len(g) == 2)
    keep = both[both["patient"].isin(both["patient"].drop_duplicates().head(6))]
    keep.drop(columns="patient").to_csv(tmp_path / "eyepacs.csv", index=False)
    return tmp_path / "idrid_ext.csv", tmp_path / "eyepacs.csv", sorted(planted["id_code"])


def _config(sample_dir: Path, tmp_path: Path) -> dict:
    idrid_csv, eye_csv, _ = _external_csvs(sample_dir, tmp_path)
    return {
        "workdir": str(tmp_path / "work"), "budget_hours": 1, "workers": 1,
        "data": {"sources": [
            {"name": "sample", "reader": "idrid", "csv": str(sample_dir / "labels.csv"),
             "images": str(sample_dir / "images"), "role": "competition", "holdout": 6},
            {"name": "idrid_ext", "reader": "idrid", "csv": str(idrid_csv),
             "images": str(SHARED / "idrid_train" / "images"), "role": "external", "weight": 2.0},
            {"name": "eyepacs", "reader": "eyepacs", "csv": str(eye_csv),
             "images": str(SHARED / "eyepacs1024" / "images"), "role": "external",
             "preprocess": {"ben_graham": True}},
        ]},
        "preprocess": {"size": 64},
        "folds": {"n_folds": 2, "seed": 0},
        "pretrain": {"val_fraction": 0.25, "epochs": 1},
        "train": {"epochs": 2, "batch_size": 4, "num_workers": 0, "max_steps_per_epoch": 2, "progress": False},
        "models": [{"name": "lite0", "model": "efficientnet-lite0", "head": "regression", "pretrained": False,
                    "size": 64, "pretrain": True, "average_last": 2, "seeds": [0, 1], "folds": [0, 1]}],
        "infer": {"tta": "none", "batch_size": 4, "workers": 1},
        "blend": {"gradcam_per_grade": 0},
    }


@needs_shared
def test_table_groups_patients_and_drops_external_duplicates_of_competition_images(sample_dir, tmp_path):
    cfg = _config(sample_dir, tmp_path)
    _, _, planted = _external_csvs(sample_dir, tmp_path)
    specs = assemble.parse_sources(cfg["data"])
    table = assemble.build_table(specs, tmp_path / "t", n_folds=2, seed=0, val_fraction=0.25, workers=1,
                                 progress=False)
    dropped = pd.read_csv(tmp_path / "t" / assemble.DROPPED_FILE, dtype=str)
    assert sorted(dropped["id"]) == [f"idrid_ext:{i}" for i in planted]
    assert set(dropped["duplicate_of"]) == set(planted)  # each names the competition image it copies
    assert not set(dropped["id"]) & set(table["id"])
    ext = table[table["role"] == "external"]
    assert (ext["fold"] == -1).all() and set(ext["dataset"]) == {"idrid_ext", "eyepacs"}
    comp = table[table["role"] == "competition"]
    test = pd.read_csv(tmp_path / "t" / assemble.TEST_FILE, dtype=str)
    assert 5 <= len(test) <= 8 and len(comp) + len(test) == 60 and set(comp["fold"]) == {0, 1}
    assert not set(test["id"]) & set(table["id"])  # held-out images are in no fold
    eyes = table[table["dataset"] == "eyepacs"]
    assert (eyes.groupby("patient")["group"].nunique() == 1).all()  # both eyes of a patient: one group
    assert (eyes.groupby("patient")["pretrain_val"].nunique() == 1).all()  # ... so one side of the split
    assert 0 < ext["pretrain_val"].sum() < len(ext)
    again = assemble.build_table(specs, tmp_path / "t", n_folds=2, seed=0, val_fraction=0.25, workers=1)
    pd.testing.assert_frame_equal(again, table)  # built once, then reused

    stage1 = assemble.stage_table(table, "pretrain")
    assert set(stage1["dataset"]) == {"idrid_ext", "eyepacs"} and set(stage1["fold"]) == {0, 1}
    fine = assemble.stage_table(table, "finetune", ["eyepacs"])
    assert set(fine["dataset"]) == {"sample", "eyepacs"} and (fine.loc[fine["dataset"] == "eyepacs", "fold"] == -1).all()
    with pytest.raises(ValueError, match="no external rows from dataset"):
        assemble.stage_table(table, "finetune", ["messidor"])


@needs_shared
@pytest.mark.slow
def test_two_stage_multi_source_chain(sample_dir, tmp_path):
    cfg = _config(sample_dir, tmp_path)
    work = Path(cfg["workdir"])
    log = chain.run_chain(cfg)
    assert list(log["steps"]) == ["preprocess:cache0", "pretrain:lite0", "train:lite0_s0:fold0",
                                  "train:lite0_s0:fold1", "train:lite0_s1:fold0", "train:lite0_s1:fold1",
                                  "infer", "blend"]
    table = pd.read_csv(work / "data" / "folds.csv", dtype={"id": str})
    comp_ids = set(table.loc[table["role"] == "competition", "id"])
    held_out = set(pd.read_csv(work / "data" / "test.csv", dtype=str)["id"])
    dropped = set(pd.read_csv(work / "data" / assemble.DROPPED_FILE, dtype=str)["duplicate_of"])

    stage1 = pd.read_csv(work / "pretrain" / "lite0" / "rows.csv", dtype={"id": str})
    assert set(stage1["dataset"]) == {"idrid_ext", "eyepacs"}
    assert not set(stage1["id"]) & (comp_ids | held_out)  # no competition image, validation or test
    assert not {i.split(":", 1)[1] for i in stage1["id"]} & dropped  # nor a copy of one
    assert json.loads((work / "pretrain" / "lite0" / "config.json").read_text())["source_weights"] == {
        "idrid_ext": 2.0, "eyepacs": 1.0}
    init = str(work / "pretrain" / "lite0" / "best.pt")
    for name in ("lite0_s0", "lite0_s1"):
        for fold in (0, 1):
            fold_dir = work / "runs" / name / f"fold{fold}"
            config = json.loads((fold_dir / "config.json").read_text())
            assert config["init_from"] == init  # fine-tuned from stage 1, recorded in the fold's config
            assert config["seed"] == int(name[-1])
            rows = pd.read_csv(fold_dir / "rows.csv", dtype={"id": str})
            assert set(rows["dataset"]) == {"sample"}
            import torch

            best = torch.load(fold_dir / "best.pt", weights_only=False)
            assert best["averaged_epochs"] == [1, 2]  # weights of the last 2 epochs, averaged
    sub = pd.read_csv(work / "blend" / "submission.csv", dtype=str)
    assert set(sub["id_code"]) == held_out

    rerun = chain.run_chain(cfg)  # every step finished: all skipped
    assert rerun["steps"] == log["steps"]


@pytest.mark.parametrize("config", sorted(CONFIGS.rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(CONFIGS).with_suffix("")))
def test_plan_of_every_config_lists_its_stages(config, capsys):
    cfg = yaml_load(config)
    if "models" not in cfg:  # a fold's TrainConfig (configs/fold_example.yaml), not a chain
        pytest.skip("not a chain config")
    if "sources" in cfg["data"] and not SHARED.is_dir():
        pytest.skip("../shared/data not present")
    assert run_cli.main([str(config), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "preprocess:cache0" in out and "infer" in out and "blend" in out
    assert "P100" in out
    if any(m.get("pretrain") for m in cfg["models"]):
        assert "pretrain:" in out and "stage 1" in out


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_config_errors_are_reported_before_running(tmp_path, sample_dir, capsys):
    base = {"data": {"source": "idrid", "csv": str(sample_dir / "labels.csv"), "images": str(sample_dir / "images"),
                     "holdout": 6},
            "models": [{"name": "m", "model": "efficientnet-lite0"}]}
    cases = [
        ({**base, "modles": []}, "unknown top-level key"),
        ({**base, "models": [{"name": "m", "model": "efficientnet-lite0", "lrr": 1}]}, "unknown model 'm' key"),
        ({**base, "data": {**base["data"], "csv": str(tmp_path / "nope.csv")}}, "does not exist"),
        ({**base, "models": [{"name": "m", "pretrain": True}]}, "no data source has role: external"),
    ]
    for cfg, message in cases:
        p = tmp_path / "c.yaml"
        import yaml

        p.write_text(yaml.safe_dump(cfg))
        assert run_cli.main([str(p), "--plan"]) == 2
        assert message in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("id_code,diagnosis\nnot_there,1\n")
    cfg = {**base, "data": {"sources": [
        {"name": "a", "reader": "idrid", "csv": str(sample_dir / "labels.csv"), "images": str(sample_dir / "images"),
         "holdout": 6},
        {"name": "b", "reader": "idrid", "csv": str(empty), "images": str(sample_dir / "images"), "role": "external"}]}}
    p.write_text(yaml.safe_dump(cfg))
    assert run_cli.main([str(p), "--plan"]) == 2
    err = capsys.readouterr().err
    assert "source 'b'" in err and "no usable row" in err
