"""Inference: TTA views, checkpoint loading, unreadable test images still get a (flagged) row."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import register_tiny_model

from kaggle_utils import io
from kaggle_utils.data import sources
from kaggle_utils.data.preprocess import PreprocessConfig
from kaggle_utils.inference import ensemble
from kaggle_utils.inference import predict as infer


def test_tta_views_are_distinct_and_counted():
    x = torch.rand(2, 3, 8, 8)
    for mode, n in [("none", 1), ("hflip", 2), ("d8", 8), ("jitter3", 4)]:
        views = list(infer.tta_batches(x, mode, seed=1))
        assert len(views) == n == infer.tta_views(mode)
        assert all(v.shape == x.shape for v in views)
        assert torch.equal(views[0], x)
    d8 = list(infer.tta_batches(x, "d8"))
    flat = {tuple(v[0].flatten().tolist()) for v in d8}
    assert len(flat) == 8  # the 8 dihedral transforms of a random image all differ
    again = list(infer.tta_batches(x, "jitter3", seed=1))
    assert all(torch.equal(a, b) for a, b in zip(again, infer.tta_batches(x, "jitter3", seed=1), strict=True))
    with pytest.raises(ValueError, match="unknown TTA mode"):
        infer.tta_views("rot5")


def test_test_table_keeps_every_id_in_order(tmp_path):
    (tmp_path / "imgs").mkdir()
    pd.DataFrame({"id_code": ["b", "a", "c"]}).to_csv(tmp_path / "test.csv", index=False)
    t = sources.test_table(tmp_path / "test.csv", tmp_path / "imgs", ext=".png")
    assert t["id"].tolist() == ["b", "a", "c"]
    assert t["path"].iloc[1].endswith("imgs/a.png")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, sample_dir):
    """Two folds of the tiny test model, saved the way training saves them."""
    from kaggle_utils.training.config import TrainConfig
    from kaggle_utils.training.loop import train_fold

    register_tiny_model()
    root = tmp_path_factory.mktemp("run")
    labels = pd.read_csv(sample_dir / "labels.csv").head(16)
    table = pd.DataFrame({"id": labels["id_code"], "path": [str(sample_dir / "images" / f"{i}.jpg")
                                                            for i in labels["id_code"]],
                          "grade": labels["diagnosis"], "source": "idrid"})
    from kaggle_utils.data.cache import build_cache, load_cache

    build_cache(table, root / "cache", PreprocessConfig(size=64), workers=1)
    cached = load_cache(root / "cache")
    cached["fold"] = np.arange(len(cached)) % 2
    for fold in (0, 1):
        cfg = TrainConfig(out_dir=str(root / "runs" / "tiny" / f"fold{fold}"), cache_dir=str(root / "cache"),
                          model="tiny-cnn-test", size=64, epochs=1, batch_size=4, fold=fold, num_workers=0,
                          progress=False, augmentation="none", pretrained=False)
        train_fold(cfg, table=cached)
    return root / "runs" / "tiny", table


def test_unreadable_test_images_get_a_row_and_a_reason(tiny_run, tmp_path):
    run_dir, table = tiny_run
    images = tmp_path / "test_images"
    images.mkdir()
    for p in table["path"][:4]:
        shutil.copy(p, images / Path(p).name)
    (images / "broken.jpg").write_bytes(Path(table["path"][4]).read_bytes()[:3000])  # truncated JPEG
    (images / "empty.jpg").write_bytes(b"")
    ids = [Path(p).stem for p in table["path"][:4]] + ["broken", "empty", "missing"]
    pd.DataFrame({"id_code": ids}).to_csv(tmp_path / "test.csv", index=False)
    test = sources.test_table(tmp_path / "test.csv", images, ext=".jpg")

    results = infer.infer([run_dir], test, tmp_path / "preds", tta="hflip", batch_size=3, device="cpu",
                          progress=False)
    df = results["tiny"]
    assert df["id"].tolist() == ids
    assert df["status"].tolist() == ["ok"] * 4 + ["failed"] * 3
    assert np.isfinite(df["pred"][:4]).all() and df["pred"][4:].isna().all()
    assert {"pred_fold0", "pred_fold1"} <= set(df.columns)
    failed = pd.read_csv(tmp_path / "preds" / infer.FAILED_FILE)
    assert failed["id"].tolist() == ["broken", "empty", "missing"]
    assert failed["reason"].str.len().gt(0).all()

    # blending still gives every test id a grade, the unreadable ones the fallback
    with pytest.warns(UserWarning, match="fallback"):
        result = ensemble.blend_runs({"tiny": run_dir}, {"tiny": tmp_path / "preds" / "tiny"}, ids)
    sub = result.submission
    assert sub["id_code"].tolist() == ids
    assert sub["diagnosis"].between(0, 4).all()
    assert (sub["diagnosis"][4:] == result.fallback).all()


def test_predictions_match_a_direct_forward(tiny_run, tmp_path):
    """The threaded loader + fold averaging equal a plain loop over the same preprocessed images."""
    run_dir, table = tiny_run
    run = infer.load_run(run_dir)
    test = table[["id", "path"]].head(5)
    got = infer.predict_runs([run], test, tta="none", batch_size=2, progress=False)["tiny"]
    from kaggle_utils.data.preprocess import preprocess_image

    x = torch.stack([torch.from_numpy(preprocess_image(p, run.preprocess)).permute(2, 0, 1) for p in test["path"]])
    want = infer.predict_batch(run.models, x, run.mean, run.std, "none").mean(axis=0)
    np.testing.assert_allclose(got["pred"].to_numpy(), want, atol=1e-5)


def test_adapt_batchnorm_mixes_test_statistics_and_leaves_the_model_alone():
    """AdaBN on a BatchNorm fed by a known shift: mix 1 takes the test images' statistics, 0.5 half of them,
    0 returns the model itself; the original keeps its training statistics, and the pass is deterministic."""
    from kaggle_utils.inference.adapt import adapt_batchnorm, batchnorm_layers

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1, bias=False), torch.nn.BatchNorm2d(3)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    before = net[1].running_mean.clone()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(180, 230, (4, 3, 8, 8), generator=g, dtype=torch.uint8) for _ in range(3)]
    expect = torch.stack(batches).float().div(255).mean(dim=(0, 1, 3, 4))  # mean 0 / std 1 normalisation
    full = adapt_batchnorm([net], batches, (0, 0, 0), (1, 1, 1), mix=1.0)[0]
    torch.testing.assert_close(full[1].running_mean, expect, atol=1e-5, rtol=0)
    half = adapt_batchnorm([net], batches, (0, 0, 0), (1, 1, 1), mix=0.5)[0]
    torch.testing.assert_close(half[1].running_mean, (expect + before) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(net[1].running_mean, before)
    assert not net.training and not full.training and all(not bn.training for bn in batchnorm_layers(full))
    again = adapt_batchnorm([net], batches, (0, 0, 0), (1, 1, 1), mix=1.0)[0]
    torch.testing.assert_close(again[1].running_var, full[1].running_var, atol=0, rtol=0)
    assert adapt_batchnorm([net], batches, (0, 0, 0), (1, 1, 1), mix=0.0)[0] is net
    with pytest.raises(ValueError, match="between 0"):
        adapt_batchnorm([net], batches, (0, 0, 0), (1, 1, 1), mix=1.5)


def test_adapt_bn_changes_predictions_deterministically(tiny_run, tmp_path):
    """predict_runs / infer with adapt_bn: the prediction moves off the unadapted one, is the same on a rerun,
    and the run's own models keep their statistics (a later plain call predicts as before)."""
    run_dir, table = tiny_run
    run = infer.load_run(run_dir)
    test = table[["id", "path"]].head(8)
    plain = infer.predict_runs([run], test, batch_size=4, progress=False)["tiny"]["pred"].to_numpy()
    adapted = infer.predict_runs([run], test, batch_size=4, progress=False, adapt_bn=1.0)["tiny"]["pred"].to_numpy()
    again = infer.predict_runs([run], test, batch_size=4, progress=False, adapt_bn=1.0)["tiny"]["pred"].to_numpy()
    assert np.abs(adapted - plain).max() > 1e-4
    np.testing.assert_array_equal(adapted, again)
    np.testing.assert_array_equal(infer.predict_runs([run], test, batch_size=4, progress=False)["tiny"]["pred"],
                                  plain)
    with pytest.raises(ValueError, match="adapt_bn"):
        infer.infer([run_dir], test, tmp_path / "p", device="cpu", progress=False, adapt_bn=-1)


def test_natural_photographs_reach_a_ben_copy_model_in_its_look(tiny_run, tmp_path):
    """A model of Ben-filtered copies (resize-only recipe, natural="ben") given the raw photographs predicts
    exactly what it predicts on those photographs brought to the Ben look beforehand."""
    import cv2

    from kaggle_utils.data.preprocess import natural_recipe, preprocess_image

    run_dir, table = tiny_run
    run = infer.load_run(run_dir)
    recipe = PreprocessConfig(size=64, crop=False, ben_graham=False, resize_mode="stretch", natural="ben")
    ben_run = dataclasses.replace(run, preprocess=recipe)
    raw = table[["id", "path"]].head(4)
    filtered = []
    for row in raw.itertuples():
        path = tmp_path / f"{row.id}.png"
        cv2.imwrite(str(path), preprocess_image(row.path, natural_recipe(recipe))[:, :, ::-1])
        filtered.append(str(path))
    on_raw = infer.predict_runs([ben_run], raw, progress=False)["tiny"]["pred"].to_numpy()
    on_copies = infer.predict_runs([ben_run], raw.assign(path=filtered), progress=False)["tiny"]["pred"].to_numpy()
    np.testing.assert_allclose(on_raw, on_copies, atol=1e-6)
    for path, copy in zip(raw["path"], filtered, strict=True):  # what the model sees: the same pixels
        seen_raw, seen_copy = infer.load_test_image(path, recipe, 64)[0], infer.load_test_image(copy, recipe, 64)[0]
        np.testing.assert_array_equal(seen_raw, seen_copy)
        as_is = infer.load_test_image(path, dataclasses.replace(recipe, natural="as_is"), 64)[0]
        assert np.abs(as_is.astype(int) - seen_raw).mean() > 10


def test_predictions_record_the_look_natural_photographs_get(tiny_run, tmp_path):
    """inference.json names each run's training recipe and, for a Ben copy's model (natural="ben"), the recipe
    its natural-colour photographs went through (at the recipe's size) with this version's blur."""
    from kaggle_utils.data import preprocess

    run_dir, table = tiny_run
    run = infer.load_run(run_dir)
    infer.infer([run_dir], table[["id", "path"]].head(2), tmp_path / "p", device="cpu", progress=False)
    settings = io.read_json(tmp_path / "p" / infer.SETTINGS_FILE)
    assert settings["recipes"]["tiny"] == {"trained": run.preprocess.to_dict(), "natural_photographs": None}
    ben = dataclasses.replace(run, preprocess=PreprocessConfig(size=224, crop=False, ben_graham=False,
                                                               natural="ben"))
    look = infer.recipe_record(ben)["natural_photographs"]
    assert look["ben_graham"] and look["size"] == 224  # then resized to run.size, like every test image
    assert look["ben_sigma_frac"] == preprocess.NATURAL_BEN_SIGMA_FRAC and look["natural"] == "as_is"
