import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.report import gradcam, html, plots

PNG = b"\x89PNG\r\n\x1a\n"


def _oof(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.45, 0.1, 0.25, 0.08, 0.12])
    return pd.DataFrame({"id": [f"i{i:04d}" for i in range(n)], "grade": y, "fold": np.arange(n) % 3,
                         "effb4": np.clip(y + rng.normal(0, 0.5, n), 0, 4),
                         "resnext": np.clip(y + rng.normal(0, 0.7, n), 0, 4)})


def _curves() -> dict[str, pd.DataFrame]:
    ep = np.arange(1, 6)
    return {f"effb4/fold{k}": pd.DataFrame({"epoch": ep, "train_loss": 1 / ep, "val_loss": 1.2 / ep + 0.05 * k,
                                           "val_qwk": 0.6 + 0.05 * ep, "lr": 1e-3, "time": 10.0})
            for k in range(3)}


def test_tables():
    oof = _oof()
    thr = {"effb4": [0.5, 1.5, 2.5, 3.5], "resnext": [0.5, 1.5, 2.5, 3.5]}
    mt = plots.model_table(oof, ["effb4", "resnext"], thr)
    assert list(mt["model"]) == ["effb4", "resnext"]
    assert mt.loc[0, "qwk_fitted"] == pytest.approx(mt.loc[0, "qwk_default"])
    assert mt.loc[0, "qwk_fitted"] > mt.loc[1, "qwk_fitted"]  # less noise scores higher
    ft = plots.fold_table(oof, ["effb4", "resnext"], thr)
    assert list(ft["fold"]) == [0, 1, 2] and ft["n"].sum() == len(oof)


def test_load_curves(tmp_path):
    for k, df in enumerate(_curves().values()):
        (tmp_path / "effb4" / f"fold{k}").mkdir(parents=True)
        df.to_csv(tmp_path / "effb4" / f"fold{k}" / "metrics.csv", index=False)
    curves = plots.load_curves([tmp_path / "effb4"])
    assert list(curves) == ["effb4/fold0", "effb4/fold1", "effb4/fold2"]
    assert list(curves["effb4/fold1"].columns)[:4] == ["epoch", "train_loss", "val_loss", "val_qwk"]


def test_write_report_html_and_pngs(tmp_path):
    oof = _oof()
    rng = np.random.default_rng(1)
    examples = [{"id": f"x{g}{k}", "grade": g, "pred": g + 0.1, "image": rng.integers(0, 255, (32, 32, 3), np.uint8),
                 "heatmap": rng.random((8, 8))} for g in (0, 2, 4) for k in range(2)]
    paths = html.write_report(tmp_path / "rep", oof, weights={"effb4": 0.7, "resnext": 0.3}, curves=_curves(),
                                gradcam=examples, title="test run")
    pngs = {k: v for k, v in paths.items() if v.suffix == ".png"}
    assert set(pngs) == {"confusion", "roc", "model_qwk", "fold_qwk", "pred_distribution", "curves", "gradcam",
                         "shakeup", "fold_thresholds"}  # shake-up is always on; no test preds, no prior plot
    for p in pngs.values():
        assert p.parent == tmp_path / "rep" and p.read_bytes()[:8] == PNG and p.stat().st_size > 1000
    page = paths["html"].read_text()
    assert page.startswith("<!doctype html>") and "test run" in page
    for p in pngs.values():
        assert f'src="{p.name}"' in page
    # headline numbers come before the per-model table
    assert page.index("referable DR AUC") < page.index("Per model") < page.index("Grad-CAM")
    summary = json.loads(paths["summary"].read_text())
    assert summary["prediction"] == "blend" and summary["weights"] == {"effb4": 0.7, "resnext": 0.3}
    assert 0.5 < summary["qwk"] <= 1 and 0.5 < summary["referable"]["auc"] <= 1
    models = pd.read_csv(paths["models_csv"])
    assert list(models["model"]) == ["effb4", "resnext", "blend"]
    assert not list((tmp_path / "rep").glob(".*.tmp"))


def test_write_report_single_model_without_folds(tmp_path):
    oof = _oof(120).drop(columns=["fold", "resnext"])
    paths = html.write_report(tmp_path, oof, thresholds=[0.5, 1.5, 2.5, 3.5])
    assert "fold_qwk" not in paths and "curves" not in paths and "gradcam" not in paths
    assert json.loads(paths["summary"].read_text())["prediction"] == "effb4"
    assert paths["html"].stat().st_size > 0


def test_overlay_shapes_and_dtype():
    img = np.full((40, 60, 3), 128, np.uint8)
    heat = np.zeros((10, 15))
    heat[:5, :5] = 1.0
    out = gradcam.overlay(img, heat)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], out[-1, -1])  # hot corner coloured differently from the cold one


def test_select_examples_per_grade():
    oof = _oof()
    picked = gradcam.select_examples(oof, n_per_grade=2, pred_col="effb4")
    assert picked.groupby("grade").size().to_dict() == {g: 2 for g in range(5)}
    pd.testing.assert_frame_equal(picked, gradcam.select_examples(oof, n_per_grade=2, pred_col="effb4"))


def test_report_and_ensemble_import_without_torch():
    code = "import sys, kaggle_utils.report, kaggle_utils.inference.ensemble; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------ Grad-CAM
torch = pytest.importorskip("torch")
nn = torch.nn


class QuadrantModel(nn.Module):
    """Output depends only on the top-left quadrant of the conv features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 1)
        with torch.no_grad():
            self.head.weight.fill_(0.5)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        h, w = f.shape[-2:]
        return self.head(f[:, :, : h // 2, : w // 2].mean(dim=(2, 3)))

    def decode(self, out):
        return 4 * torch.sigmoid(out[:, 0])


class GapModel(nn.Module):
    """Backbone-like: a squeeze-excitation conv (1x1 map) registered first, GAP head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.se = nn.Conv2d(8, 8, 1)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8, 1)
        with torch.no_grad():
            self.fc.weight.fill_(0.5)
            self.conv2.weight.abs_()  # non-negative features, so the map is not all clipped away

    def forward(self, x):
        f = self.conv2(torch.relu(self.conv1(x)))
        f = f * torch.sigmoid(self.se(f.mean(dim=(2, 3), keepdim=True)))
        return self.fc(f.mean(dim=(2, 3)))

    def decode(self, out):
        return 4 * torch.sigmoid(out[:, 0])


def test_grad_cam_highlights_the_driving_region():
    model = QuadrantModel().train()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cam = gradcam.grad_cam(model, x)
    assert cam.shape == (32, 32) and np.isfinite(cam).all()
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert cam[:16, :16].sum() / cam.sum() > 0.9
    assert model.training  # mode restored


def test_grad_cam_default_layer_and_gap_equivalence():
    model = GapModel().eval()
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    assert gradcam.find_target_layer(model, x) is model.conv2  # SE conv runs later but on a 1x1 map
    hires = gradcam.grad_cam(model, x)
    classic = gradcam.grad_cam(model, x[0], target_layer=model.conv2, method="gradcam")
    assert hires.shape == (24, 24) and np.isfinite(hires).all() and hires.min() >= 0
    assert hires.max() == pytest.approx(1.0) and (hires > 0).mean() > 0.5 and hires.std() > 0.01  # a real map
    # pooled-only paths (SE gate, GAP) give a gradient uniform over space per channel: both methods agree
    assert np.allclose(hires, classic, atol=1e-5)
    with pytest.raises(ValueError, match="unknown CAM method"):
        gradcam.grad_cam(model, x, method="scorecam")


def test_gradcam_examples_feed_the_grid(tmp_path):
    model = QuadrantModel()
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (32, 32, 3), np.uint8) for _ in range(3)]
    ex = gradcam.gradcam_examples(model, imgs, grades=[0, 2, 2], ids=["a", "b", "c"])
    assert [e["id"] for e in ex] == ["a", "b", "c"] and all(0 <= e["pred"] <= 4 for e in ex)
    assert all(e["heatmap"].shape == (32, 32) for e in ex)
    path = gradcam.plot_gradcam_grid(ex, tmp_path / "grid.png")
    assert path.read_bytes()[:8] == PNG


def test_grad_cam_sees_through_a_clamped_regression_output():
    class Clamped(QuadrantModel):
        def __init__(self) -> None:
            super().__init__()
            with torch.no_grad():
                self.head.bias.fill_(-10.0)  # raw output far below 0: clamp(0, 4) has zero gradient

        def decode(self, out):
            return out[:, 0].clamp(0, 4)

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cam = gradcam.grad_cam(Clamped(), x)
    assert cam.max() == pytest.approx(1.0) and cam[:16, :16].sum() / cam.sum() > 0.9
