"""train_fold on real (small) data: artifacts, kill -9 resume, deadline, two-stage init, config checks, CLI.

Resume tolerance: on CPU, a run SIGKILLed mid-epoch and resumed ends with weights *bit-identical* to an
uninterrupted run (asserted with torch.equal, i.e. atol=0).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import TINY_MODEL, pick_rows, register_tiny_model, resized_table

from kaggle_utils.training import __main__ as training_cli
from kaggle_utils.training import checkpoint, loop
from kaggle_utils.training import table as training_table
from kaggle_utils.training.checkpoint import load_checkpoint, load_model
from kaggle_utils.training.config import ConfigMismatchError, TrainConfig
from kaggle_utils.training.loop import train_fold
from kaggle_utils.training.schedule import LRSchedule

HELPERS = Path(__file__).with_name("train_helpers.py")
REPO = Path(__file__).resolve().parents[1]

# 40 images, 4 folds: 30 train / 10 validation; batch 4 -> 7 steps per epoch.
TINY = dict(model=TINY_MODEL, pretrained=False, size=64, epochs=2, batch_size=4, lr=3e-3, warmup_epochs=0.5,
            augmentation="seed",
            sampler_rates=[1, 2, 2, 2, 2], num_workers=0, log_every=2, progress=False, checkpoint_every_steps=3,
            seed=11)


@pytest.fixture(scope="module")
def tiny_table(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    register_tiny_model()
    return resized_table(shared_data, tmp_path_factory.mktemp("img64"), n=40, size=64)


@pytest.fixture(scope="module")
def reference(tiny_table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted tiny run: what every interrupted run must end up equal to."""
    out = tmp_path_factory.mktemp("reference")
    result = train_fold(TrainConfig(out_dir=str(out), **TINY), table=tiny_table)
    return {"result": result, "out": out, "last": load_checkpoint(out / "last.pt")}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    diff = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"weights differ (max abs diff per tensor): {diff}"


def test_reference_run_writes_every_artifact(reference, tiny_table):
    out, res = reference["out"], reference["result"]
    assert res["status"] == "completed" and res["epochs_done"] == 2 and res["global_step"] == 14
    for name in ("last.pt", "best.pt", "oof.csv", "metrics.csv", "steps.csv", "curves.png", "config.json"):
        assert (out / name).stat().st_size > 0, name
    assert res["best"] == str(out / "best.pt")
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["epoch", "train_loss", "val_loss", "val_qwk", "lr", "time"]
    assert metrics["epoch"].tolist() == [1, 2] and np.isfinite(metrics[["train_loss", "val_loss"]]).all().all()
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    val = tiny_table[tiny_table["fold"] == 0]
    assert list(oof.columns) == ["id", "grade", "pred", "fold"]
    assert oof["id"].tolist() == val["id"].tolist() and (oof["fold"] == 0).all()
    assert oof["grade"].tolist() == val["grade"].tolist() and oof["pred"].between(0, 4).all()
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == res["best_epoch"] and len(best["thresholds"]) == 4
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == TrainConfig(
        out_dir=str(out), **TINY)
    last = reference["last"]
    assert last["format"] == checkpoint.CHECKPOINT_FORMAT and last["epoch"] == 2 and last["step"] == 0


def test_rerun_of_a_finished_run_returns_its_result(reference, tiny_table):
    again = train_fold(TrainConfig(out_dir=str(reference["out"]), **TINY), table=tiny_table)
    assert again["resumed"] and again["status"] == "completed" and again["global_step"] == 14
    assert_same_weights(load_checkpoint(reference["out"] / "last.pt")["model"], reference["last"]["model"])


@pytest.mark.slow
def test_kill9_mid_epoch_then_rerun_matches_uninterrupted(reference, tiny_table, tmp_path):
    out = tmp_path / "run"
    table_csv = tmp_path / "table.csv"
    tiny_table.to_csv(table_csv, index=False)
    cfg_path = TrainConfig(out_dir=str(out), **TINY).to_json(tmp_path / "cfg.json")
    # global step 11 = epoch 2, step 4; the last checkpoint before it is epoch 2 step 3 (checkpoint_every_steps=3)
    proc = subprocess.run([sys.executable, str(HELPERS), "train", str(cfg_path), "--table", str(table_csv),
                           "--kill-at", "11"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ck = load_checkpoint(out / "last.pt")
    assert (ck["epoch"], ck["step"], ck["global_step"]) == (1, 3, 10)
    assert ck["status"] == "running" and ck["sampler"]["start"] == 12

    # resumed with a DataLoader worker: augmentation seeds travel with the indices, so workers change nothing
    result = train_fold(TrainConfig(out_dir=str(out), **{**TINY, "num_workers": 1}), table=tiny_table)
    assert result["resumed"] and result["status"] == "completed" and result["global_step"] == 14
    last = load_checkpoint(out / "last.pt")
    assert_same_weights(last["model"], reference["last"]["model"])
    for a, b in zip(last["optimizer"]["state"].values(), reference["last"]["optimizer"]["state"].values(),
                    strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    ref_hist = pd.DataFrame(reference["last"]["history"]).drop(columns="time")
    pd.testing.assert_frame_equal(pd.DataFrame(last["history"]).drop(columns="time"), ref_hist, rtol=1e-6)


@pytest.mark.slow
def test_deadline_mid_epoch_stops_cleanly_and_resumes(reference, tiny_table, tmp_path, monkeypatch):
    out = tmp_path / "run"
    offset = {"s": 0.0}
    monkeypatch.setattr(loop, "_now", lambda: time.time() + offset["s"])

    def jump(info: dict) -> None:  # the clock passes the deadline after global step 10 (epoch 2, step 3)
        if info["global_step"] == 10:
            offset["s"] = 10 * 3600.0

    cfg = TrainConfig(out_dir=str(out), deadline=3600, **TINY)
    result = train_fold(cfg, table=tiny_table, on_step=jump)
    assert result["status"] == "deadline" and result["global_step"] == 10 and result["epochs_done"] == 1
    ck = load_checkpoint(out / "last.pt")
    assert (ck["epoch"], ck["step"], ck["status"]) == (1, 3, "deadline")
    # usable as it stands: both checkpoints rebuild a model that predicts grades
    x = torch.randn(2, 3, 64, 64)
    for name in ("last.pt", "best.pt"):
        model = load_model(out / name)
        with torch.no_grad():
            grades = model.decode(model(x))
        assert grades.shape == (2,) and torch.isfinite(grades).all() and not model.training
    from_dict = load_model(ck)  # a checkpoint already read rebuilds the same model without reading again
    with torch.no_grad():
        assert torch.equal(from_dict(x), load_model(out / "last.pt")(x))
    assert len(pd.read_csv(out / "oof.csv")) == 10 and result["best_epoch"] == 1

    offset["s"] = 0.0
    resumed = train_fold(TrainConfig(out_dir=str(out), **TINY), table=tiny_table)  # no deadline this time
    assert resumed["resumed"] and resumed["status"] == "completed" and resumed["global_step"] == 14
    assert_same_weights(load_checkpoint(out / "last.pt")["model"], reference["last"]["model"])


def test_deadline_before_any_step_leaves_a_resumable_checkpoint(tiny_table, tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), deadline=time.time() - 1, **TINY)
    result = train_fold(cfg, table=tiny_table)
    assert result["status"] == "deadline" and result["global_step"] == 0 and result["best"] is None
    ck = load_checkpoint(tmp_path / "last.pt")
    assert (ck["epoch"], ck["step"]) == (0, 0)


def test_changed_config_is_refused_unless_overwrite(reference, tiny_table):
    out = str(reference["out"])
    with pytest.raises(ConfigMismatchError, match=r"lr: saved 0.003 vs now 0.001"):
        train_fold(TrainConfig(out_dir=out, **{**TINY, "lr": 1e-3}), table=tiny_table)
    with pytest.raises(ConfigMismatchError, match="different rows"):
        train_fold(TrainConfig(out_dir=out, **TINY), table=tiny_table.iloc[:-1])
    # runtime-only settings may change
    same = train_fold(TrainConfig(out_dir=out, **{**TINY, "log_every": 5, "num_workers": 1}), table=tiny_table)
    assert same["status"] == "completed"


def test_overwrite_starts_over(tiny_table, tmp_path):
    short = {**TINY, "epochs": 1, "max_steps_per_epoch": 2}
    train_fold(TrainConfig(out_dir=str(tmp_path), **short), table=tiny_table)
    again = train_fold(TrainConfig(out_dir=str(tmp_path), **{**short, "lr": 1e-4, "overwrite": True}),
                       table=tiny_table)
    assert not again["resumed"] and again["global_step"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["config"]["lr"] == 1e-4


def test_given_table_with_folds_wins_over_folds_csv_and_extra_rows_only_train(tiny_table, tmp_path):
    """The notebooks' pattern: load_table(cfg) + pseudo-labelled rows with fold -1, passed as table=."""
    tiny_table[["id", "fold"]].to_csv(tmp_path / "folds.csv", index=False)
    cfg = TrainConfig(out_dir=str(tmp_path / "out"), folds_csv=str(tmp_path / "folds.csv"),
                      **{**TINY, "epochs": 1, "max_steps_per_epoch": 1})
    extra = tiny_table.head(6).assign(id=lambda d: "pseudo_" + d["id"], grade=2.5, fold=-1)
    table = pd.concat([tiny_table, extra], ignore_index=True)
    train_rows, val_rows = training_table.split_fold(training_table.load_table(cfg, table), 0)
    assert len(train_rows) == 36 and len(val_rows) == 10 and not val_rows["id"].str.startswith("pseudo").any()
    assert train_fold(cfg, table=table)["status"] == "completed"
    assert len(pd.read_csv(tmp_path / "out" / "oof.csv")) == 10


def test_early_stopping_on_qwk(tiny_table, tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), **{**TINY, "epochs": 6, "max_steps_per_epoch": 1, "lr": 1e-9,
                                                 "warmup_epochs": 0, "monitor": "val_qwk", "patience": 0})
    result = train_fold(cfg, table=tiny_table)
    hist = pd.read_csv(tmp_path / "metrics.csv")
    assert result["status"] == "early_stopped" and len(hist) < 6
    assert hist["val_qwk"].iloc[-1] <= hist["val_qwk"].iloc[:-1].max()


def test_two_stage_init_from_keeps_backbone_and_resets_other_head(reference, tiny_table, tmp_path):
    best = reference["out"] / "best.pt"
    src = load_checkpoint(best)["model"]
    cfg = TrainConfig(out_dir=str(tmp_path), init_from=str(best), **{**TINY, "head": "ordinal"})
    model = loop.build_model(cfg)
    report = checkpoint.init_weights_from(model, best, cfg)
    assert {"fc.weight", "fc.bias"} <= set(report["skipped"])
    state = model.state_dict()
    assert all(torch.equal(state[k], src[k]) for k in report["loaded"]) and len(report["loaded"]) > 10
    assert model.fc.weight.shape == (4, 32)
    same_head = loop.build_model(TrainConfig(**TINY))
    assert "fc.weight" in checkpoint.init_weights_from(same_head, best, TrainConfig(**TINY))["loaded"]
    # and through train_fold: the fine-tune stage starts from the pre-trained weights
    result = train_fold(cfg.replace(epochs=1, max_steps_per_epoch=2), table=tiny_table)
    assert result["status"] == "completed"
    with pytest.raises(ValueError, match="trains 'efficientnet-lite0'"):
        checkpoint.init_weights_from(model, best, TrainConfig(model="efficientnet-lite0"))


def test_lr_schedule_warmup_cosine_plateau():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, epochs=4, warmup_epochs=1, schedule="cosine")
    s = LRSchedule(cfg, steps_per_epoch=10)
    assert s.lr(0) == pytest.approx(0.1) and s.lr(9) == pytest.approx(1.0)
    assert s.lr(10) == pytest.approx(1.0) and s.lr(25) == pytest.approx(0.5) and s.lr(39) < 0.01
    p = LRSchedule(cfg.replace(schedule="plateau", plateau_patience=1, plateau_factor=0.5, warmup_epochs=0), 10)
    for metric in (1.0, 1.1, 1.2):
        p.epoch_end(metric)
    assert p.lr(15) == pytest.approx(0.5)
    q = LRSchedule(cfg.replace(schedule="plateau"), 10)
    q.load_state_dict(p.state_dict())
    assert q.lr(15) == pytest.approx(0.5)


def test_config_roundtrip_and_validation(tmp_path):
    cfg = TrainConfig(model="efficientnet-b0", sampler_rates=[1, 2, 2, 2, 2], deadline=3600)
    assert TrainConfig.from_file(cfg.to_json(tmp_path / "c.json")) == cfg
    (tmp_path / "c.yaml").write_text("model: efficientnet-b3\nepochs: 2\nsampler_rates: [1, 2, 2, 2, 2]\n")
    assert TrainConfig.from_file(tmp_path / "c.yaml").epochs == 2
    with pytest.raises(ValueError, match="unknown TrainConfig field.*'epoch'"):
        TrainConfig.from_dict({"epoch": 3})
    (tmp_path / "typo.yaml").write_text("epoch: 2\nwieght_decay: 0.1\n")
    with pytest.raises(ValueError, match=r"'epoch' \(did you mean 'epochs'\?\), 'wieght_decay' \(did you mean "
                                         r"'weight_decay'\?\)$"):  # a typo gets its key, not forty names
        TrainConfig.from_file(tmp_path / "typo.yaml")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd").validate()
    assert "deadline" not in cfg.result_fields() and "lr" in cfg.result_fields()


def test_cli_trains_from_a_config_file(tiny_table, tmp_path, capsys):
    table_csv = tmp_path / "table.csv"
    tiny_table.assign(path=[os.path.relpath(p, tmp_path) for p in tiny_table["path"]]).to_csv(table_csv, index=False)
    cfg = TrainConfig(out_dir=str(tmp_path / "out"), table_csv=str(table_csv), **{**TINY, "epochs": 1})
    cfg_path = cfg.to_json(tmp_path / "cfg.json")
    assert training_cli.main(["--config", str(cfg_path), "--set", "max_steps_per_epoch=2", "--set", "fold=1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "completed" and result["global_step"] == 2
    oof = pd.read_csv(tmp_path / "out" / "oof.csv")
    assert (oof["fold"] == 1).all() and len(oof) == 10


@pytest.mark.slow
def test_short_fit_on_real_data_lowers_the_loss(shared_data, tmp_path):
    """efficientnet-lite0 (ImageNet weights) on 48 real IDRiD photographs through the project's cache."""
    cache = pytest.importorskip("kaggle_utils.data.cache")
    from kaggle_utils.data.preprocess import PreprocessConfig

    rows = pick_rows(shared_data, 48).assign(source="idrid")
    cache.build_cache(rows, tmp_path / "cache", PreprocessConfig(size=96), workers=1, progress=False)
    cfg = TrainConfig(out_dir=str(tmp_path / "fold0"), cache_dir=str(tmp_path / "cache"), n_folds=4, fold=0,
                      model="efficientnet-lite0", pretrained=True, size=96, epochs=2, batch_size=8, lr=1e-3,
                      warmup_epochs=0.3, augmentation="seed", num_workers=0, log_every=1, progress=False, seed=3)
    checkpoint.seed_everything(cfg.seed)
    before = loop.build_model(cfg)  # the run's initial weights (same seed)
    result = train_fold(cfg)
    assert result["status"] == "completed"
    trainer_table = training_table.load_table(cfg)
    train_rows, val_rows = training_table.split_fold(trainer_table, 0)
    assert len(train_rows) + len(val_rows) == 48 and len(pd.read_csv(result["oof"])) == len(val_rows)

    after = load_model(result["last"])
    from kaggle_utils.data.dataset import FundusDataset

    ds = FundusDataset(train_rows, mean=after.mean, std=after.std, size=96)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = ds.targets
    with torch.no_grad():
        loss_before = torch.nn.functional.mse_loss(before.eval()(x), y).item()
        loss_after = torch.nn.functional.mse_loss(after(x), y).item()
    print(f"fixed-set MSE before {loss_before:.3f} after {loss_after:.3f}")
    assert loss_after < 0.7 * loss_before, (loss_before, loss_after)
    for key in ("best", "last", "oof", "metrics", "curves"):
        assert Path(result[key]).stat().st_size > 0


def test_average_last_epochs_is_the_mean_of_their_weights_and_validated(tiny_table, tmp_path):
    """2nd place's weight averaging: best.pt holds the mean of the last K epochs' weights, OOF from it."""
    snaps = []
    cfg = TrainConfig(out_dir=str(tmp_path / "avg"), **{**TINY, "epochs": 3, "max_steps_per_epoch": 2,
                                                         "average_last": 2, "checkpoint_every_steps": None})

    def on_step(info: dict) -> None:
        if info["step"] == 2:  # the epoch's last step: these are the weights the epoch ends with
            snaps.append({k: v.detach().clone() for k, v in info["trainer"].net.state_dict().items()})

    result = train_fold(cfg, table=tiny_table, on_step=on_step)
    assert result["averaged_epochs"] == [2, 3] and len(snaps) == 3
    best = load_checkpoint(tmp_path / "avg" / "best.pt")
    for k, v in best["model"].items():
        if v.is_floating_point():
            expected = (snaps[1][k].double() + snaps[2][k].double()) / 2
            assert torch.allclose(v.double(), expected, atol=1e-6), k
    assert not torch.equal(best["model"]["fc.weight"], snaps[2]["fc.weight"])  # not just the last epoch
    last = load_checkpoint(tmp_path / "avg" / "last.pt")
    assert torch.equal(last["model"]["fc.weight"], snaps[2]["fc.weight"])  # last.pt keeps the final weights
    oof = pd.read_csv(tmp_path / "avg" / "oof.csv")
    model = load_model(best)
    assert len(oof) == 10 and model is not None
    with pytest.raises(ValueError, match="average_last"):
        TrainConfig(epochs=2, average_last=3).validate()


def test_no_validation_rows_keeps_the_last_epoch(tiny_table, tmp_path):
    """Stage 1 on all external rows: no validation fold, best.pt is the last epoch, no OOF rows."""
    table = tiny_table.assign(fold=1)
    cfg = TrainConfig(out_dir=str(tmp_path), **{**TINY, "epochs": 2, "max_steps_per_epoch": 2, "fold": 0})
    result = train_fold(cfg, table=table)
    assert result["status"] == "completed" and result["best_epoch"] == 2
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert pd.read_csv(tmp_path / "rows.csv")["split"].eq("train").all()


def test_source_weights_shift_the_draws_between_datasets(tiny_table, tmp_path):
    table = tiny_table.assign(dataset=np.where(np.arange(len(tiny_table)) % 2, "a", "b"))
    cfg = TrainConfig(out_dir=str(tmp_path), **{**TINY, "epochs": 1, "max_steps_per_epoch": 1,
                                                 "source_weights": {"a": 4.0, "b": 1.0}, "sampler_rates": None})
    trainer = loop.Trainer(cfg, table)
    drawn = trainer.train_table["dataset"].to_numpy()[trainer.sampler.epoch_indices(0)]
    share_a = (drawn == "a").mean()
    assert 0.7 < share_a < 0.9  # 4:1 per image over two equal halves -> 0.8
    with pytest.raises(ValueError, match="no training rows"):
        loop.Trainer(cfg.replace(source_weights={"zzz": 2.0}), table)


def test_size_schedule_trains_the_first_epochs_smaller_and_validates_at_size(tiny_table, tmp_path, monkeypatch):
    seen: dict[str, set] = {"train": set(), "val": set()}
    train_step, predict_val = loop.Trainer.train_step, loop.Trainer.predict_val

    def spy_step(self, x, y):
        seen["train"].add((self.epoch, tuple(x.shape[-2:])))
        return train_step(self, x, y)

    def spy_val(self):
        seen["val"].add(self.val_ds[0][0].shape[-1])
        return predict_val(self)

    monkeypatch.setattr(loop.Trainer, "train_step", spy_step)
    monkeypatch.setattr(loop.Trainer, "predict_val", spy_val)
    cfg = TrainConfig(out_dir=str(tmp_path), **{**TINY, "epochs": 3, "size_schedule": [32, 48],
                                                 "max_steps_per_epoch": 2})
    assert train_fold(cfg, table=tiny_table)["status"] == "completed"
    assert seen["train"] == {(0, (32, 32)), (1, (48, 48)), (2, (64, 64))} and seen["val"] == {64}
    for bad in ([32, 48, 56], [16], ["32"]):  # the last epoch must train at size; sizes are ints >= 32
        with pytest.raises(ValueError, match="size_schedule"):
            cfg.replace(size_schedule=bad).validate()


def test_plan_counts_a_size_schedule_at_each_epochs_size():
    from kaggle_utils.run.estimate import epoch_sizes

    assert epoch_sizes({"size_schedule": [160, 192]}, 224, 4) == [160, 192, 224, 224]
    assert epoch_sizes({}, 224, 2) == [224, 224]


def test_a_models_size_schedule_is_its_fine_tunes_not_stage_1s(tmp_path):
    from kaggle_utils.run import chain, config

    cfg = config.load_config(str(REPO / "configs" / "kaggle_gpu.yaml"), plan_only=True)
    cfg["models"][0]["size_schedule"] = [224, 256]
    steps = {s.name: s.params for s in chain.plan(cfg, tmp_path)}
    name = cfg["models"][0]["name"]
    assert steps[f"pretrain:{name}"].get("size_schedule") is None
    assert steps[f"train:{name}:fold0"]["size_schedule"] == [224, 256]


def test_trainer_keeps_freed_memory(tiny_table, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(1))
    loop.Trainer(TrainConfig(out_dir=str(tmp_path), **{**TINY, "epochs": 1}), tiny_table)
    assert calls


def test_a_finished_run_killed_before_its_tables_writes_them_on_rerun(tiny_table, tmp_path):
    """kill -9 between the final checkpoint and metrics.csv / curves.png: the rerun finds the run complete and
    writes the tables from the checkpoint's history instead of leaving the train notebook a missing plot."""
    cfg = TrainConfig(out_dir=str(tmp_path), **{**TINY, "epochs": 1})
    loop.train_fold(cfg, tiny_table)
    metrics = (tmp_path / "metrics.csv").read_text()
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / "curves.png").unlink()
    result = loop.train_fold(cfg, tiny_table)
    assert result["status"] == "completed" and result["resumed"]
    assert (tmp_path / "metrics.csv").read_text() == metrics and (tmp_path / "curves.png").stat().st_size > 0
