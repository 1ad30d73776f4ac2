"""Kaggle bundle: wheels + checkpoints + metadata, reproducible to the byte, and a kernel that runs offline."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.data import decode
from kaggle_utils.kernel import __main__ as kernel_cli
from kaggle_utils.kernel import bundle as kernel_bundle
from kaggle_utils.kernel import image as kernel_image
from kaggle_utils.kernel import layout
from kaggle_utils.kernel import plan as kernel_plan
from kaggle_utils.kernel import testset as kernel_testset
from kaggle_utils.kernel import verify as kernel_verify
from kaggle_utils.kernel import wheels as kernel_wheels
from kaggle_utils.kernel.bundle import BundleSpec
from kaggle_utils.kernel.layout import BundleError, VerifyError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sample_dir):
    """Two real EfficientNet-Lite0 folds at 64 px (one optimiser step each), saved the way training saves them."""
    from kaggle_utils.data.cache import build_cache, load_cache
    from kaggle_utils.data.preprocess import PreprocessConfig
    from kaggle_utils.training.config import TrainConfig
    from kaggle_utils.training.loop import train_fold

    root = tmp_path_factory.mktemp("kernel_runs")
    labels = pd.read_csv(sample_dir / "labels.csv").head(8)
    table = pd.DataFrame({"id": labels["id_code"], "grade": labels["diagnosis"], "source": "idrid",
                          "path": [str(sample_dir / "images" / f"{i}.jpg") for i in labels["id_code"]]})
    build_cache(table, root / "cache", PreprocessConfig(size=64), workers=1)
    cached = load_cache(root / "cache")
    cached["fold"] = np.arange(len(cached)) % 2
    for fold in (0, 1):
        cfg = TrainConfig(out_dir=str(root / "runs" / "lite0" / f"fold{fold}"), cache_dir=str(root / "cache"),
                          model="efficientnet-lite0", pretrained=False, size=64, epochs=1, batch_size=4,
                          max_steps_per_epoch=1, fold=fold, num_workers=0, progress=False, augmentation="none")
        train_fold(cfg, table=cached)
    return root / "runs" / "lite0"


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    report = kernel_bundle.build(BundleSpec([run_dir], out, owner="tester"), progress=False)
    return out, report


def test_bundle_holds_exactly_what_the_kernel_needs(bundle, run_dir):
    out, report = bundle
    ds = out / "dataset"
    wheels = sorted(p.name for p in (ds / "wheels").iterdir())
    assert [kernel_wheels.wheel_name(Path(w))[0] for w in wheels] == ["efficientnet-lite-pytorch", "kaggle-utils"]
    assert not list(ds.rglob("last.pt")) and not (ds / "weights").exists()
    for fold in ("fold0", "fold1"):
        for name in layout.MODEL_FILES:
            copied, original = ds / "models" / "lite0" / fold / name, run_dir / fold / name
            assert copied.read_bytes() == original.read_bytes()  # checkpoints byte for byte
    manifest = json.loads((ds / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [p for p in on_disk if p != "manifest.json"]
    assert sorted(manifest["kernel_files"]) == ["kernel-metadata.json", "kernel.ipynb"]
    entry = manifest["files"]["models/lite0/fold0/best.pt"]
    assert entry["sha256"] == kernel_bundle.sha256(run_dir / "fold0" / "best.pt")
    sizes = report["sizes"]
    assert sizes["models"] == sum(p.stat().st_size for p in (ds / "models").rglob("*") if p.is_file())
    assert sizes["wheels"] == sum(p.stat().st_size for p in (ds / "wheels").iterdir())
    assert sizes["weights"] == 0 and "no ImageNet weights needed" in report["weights"]
    # what Kaggle already has is not bundled
    assert "torch" in report["assumed_on_kaggle_image"] and "torch" not in [w["name"] for w in report["wheels"]]
    assert report == json.loads((out / layout.REPORT).read_text())


def test_two_builds_from_the_same_inputs_are_identical(bundle, run_dir, tmp_path):
    out, _ = bundle
    (tmp_path / "again" / "verify" / "venv").mkdir(parents=True)  # what --verify left in --out before
    again = kernel_bundle.build(BundleSpec([run_dir], tmp_path / "again", owner="tester"), progress=False)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["build_report.json", "dataset", "kernel"]
    first = (out / "dataset" / "manifest.json").read_bytes()
    assert (tmp_path / "again" / "dataset" / "manifest.json").read_bytes() == first
    assert again["bundle_sha256"] == json.loads(first)["bundle_sha256"]
    for path in sorted((out / "dataset").rglob("*")) + sorted((out / "kernel").rglob("*")):
        if path.is_file():
            assert (tmp_path / "again" / path.relative_to(out)).read_bytes() == path.read_bytes(), path
    own = next((out / "dataset" / "wheels").glob("kaggle_utils-*.whl"))
    with zipfile.ZipFile(own) as z:
        infos = z.infolist()
    assert {i.date_time for i in infos} == {layout.ZIP_DATE}
    assert infos[-1].filename.endswith(".dist-info/RECORD")
    assert any(i.filename == "kaggle_utils/kernel/bundle.py" for i in infos)


def test_metadata_files_pass_the_kaggle_api_rules(bundle):
    out, _ = bundle
    dmeta = json.loads((out / "dataset" / "dataset-metadata.json").read_text())
    kmeta = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    assert kernel_bundle.validate_dataset_metadata(dmeta, out / "dataset") == []
    assert kernel_bundle.validate_kernel_metadata(kmeta, out / "kernel") == []
    assert dmeta["id"] == "tester/kaggle-utils-aptos-models" and dmeta["licenses"] == [{"name": "CC0-1.0"}]
    assert kmeta["dataset_sources"] == [dmeta["id"]]
    assert kmeta["competition_sources"] == ["aptos2019-blindness-detection"] and kmeta["kernel_sources"] == []
    assert (kmeta["kernel_type"], kmeta["language"], kmeta["code_file"]) == ("notebook", "python", "kernel.ipynb")
    assert kmeta["is_private"] is True and kmeta["enable_gpu"] is True and kmeta["enable_internet"] is False
    assert kmeta["machine_shape"] == "NvidiaTeslaT4" and kmeta["enable_tpu"] is False  # Kaggle's GPU: T4 x2


@pytest.mark.parametrize("change, problem", [
    ({"id": "tester/abc"}, "between 6 and 50"),
    ({"id": "tester/" + "a" * 51}, "between 6 and 50"),
    ({"id": "tester/Has_Caps"}, "lowercase"),
    ({"id": "no-owner-slug"}, "owner/dataset-slug"),
    ({"title": "short"}, "title"),
    ({"title": "x" * 51}, "title"),
    ({"licenses": [{"name": "CC0-1.0"}, {"name": "CC-BY-4.0"}]}, "exactly one"),
    ({"licenses": [{"name": "WTFPL"}]}, "not one of Kaggle's"),
    ({"subtitle": "too short"}, "subtitle"),
])
def test_dataset_metadata_rules_catch_mistakes(change, problem):
    good = {"title": "kaggle_utils models", "id": "me/kaggle-utils-models", "licenses": [{"name": "CC0-1.0"}]}
    assert kernel_bundle.validate_dataset_metadata(good) == []
    problems = kernel_bundle.validate_dataset_metadata({**good, **change})
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("change, problem", [
    ({"id": "me/abcd", "title": "abcd ok"}, "at least five"),
    ({"title": "Abc"}, "at least five"),
    ({"title": "Another title entirely"}, "resolves to slug"),
    ({"kernel_type": "kernel"}, "kernel_type"),
    ({"language": "julia"}, "language"),
    ({"enable_internet": True}, "enable_internet must be false"),
    ({"is_private": "true"}, "is_private must be true/false"),
    ({"dataset_sources": ["just-a-slug"]}, "dataset source"),
    ({"code_file": "missing.ipynb"}, "does not exist"),
])
def test_kernel_metadata_rules_catch_mistakes(bundle, change, problem):
    out, _ = bundle
    good = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    problems = kernel_bundle.validate_kernel_metadata({**good, **change}, out / "kernel")
    assert any(problem in p for p in problems), problems


def test_notebook_installs_only_from_the_dataset(bundle):
    out, _ = bundle
    nb = json.loads((out / "kernel" / "kernel.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    # papermill injects right after the parameters; then the stale submission goes, then the install
    params, clean, install = code[0], code[1], code[2]
    assert "offline-install" in install["metadata"]["tags"] and "os.remove(stale)" in clean["source"]
    assert 'bundle = f"{KAGGLE_INPUT}/{DATASET}"' in install["source"]
    assert '"--no-index", "--find-links", f"{bundle}/wheels"' in install["source"]
    assert 'DATASET = "kaggle-utils-aptos-models"' in install["source"]
    assert 'PACKAGES = ["kaggle_utils", "efficientnet-lite-pytorch"]' in install["source"]
    assert not any("kaggle_utils import" in c["source"] for c in code[:3])
    assert [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])] == [params]
    assert 'models_dir = "/kaggle/input/kaggle-utils-aptos-models/models"' in params["source"]
    assert 'test_images = "/kaggle/input/aptos2019-blindness-detection/test_images"' in params["source"]
    assert all(c.get("outputs", []) == [] for c in nb["cells"])
    # the repo's paired notebook is in sync with its jupytext source
    import jupytext

    paired = json.loads((layout.NOTEBOOK.with_suffix(".ipynb")).read_text())
    source = jupytext.read(layout.NOTEBOOK)
    assert ["".join(c["source"]) for c in paired["cells"]] == [c.source for c in source.cells]


def _bundle_holds_only_the_upload(out: Path) -> None:
    """dataset/ and kernel/ hold exactly the manifest's files; beside them only the two small reports."""
    assert sorted(p.name for p in out.iterdir()) == ["build_report.json", "dataset", "kernel", "verify_report.json"]
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    for part, listed in (("dataset", [*manifest["files"], "manifest.json"]), ("kernel", manifest["kernel_files"])):
        on_disk = [p.relative_to(out / part).as_posix() for p in (out / part).rglob("*") if not p.is_dir()]
        assert sorted(on_disk) == sorted(listed), part


def test_verify_runs_the_kernel_offline_in_a_fresh_venv(bundle, capsys):
    out, _ = bundle
    report = kernel_verify.verify(out, keep=True)
    root = Path(report.root)
    try:
        assert report.ok and report.network in ("unshare -n", "sitecustomize")
        assert report.installed_from_bundle == ["efficientnet-lite-pytorch", "kaggle-utils"]
        assert "torch" in report.linked and "kaggle-utils" not in report.linked
        test = pd.read_csv(root / "kaggle" / "input" / layout.COMPETITION / "test.csv", dtype=str)
        sub = pd.read_csv(report.submission, dtype={"id_code": str})
        assert sub["id_code"].tolist() == test["id_code"].tolist() and len(sub) == report.n_images >= 3
        assert sub["diagnosis"].between(0, 4).all()
        assert (root / "kaggle" / "input" / "kaggle-utils-aptos-models" / "wheels").is_dir()
        assert out.resolve() not in root.resolve().parents  # the workspace is never inside the bundle
        printed = capsys.readouterr().out
        assert f"[verify] test set: {report.n_images} bundled sample images" in printed
        assert "not the competition's test set: pass --data DIR" in printed and f"workspace kept: {root}" in printed
        _bundle_holds_only_the_upload(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _competition(folder: Path, sample_dir: Path, ids: list[str], missing: str = "") -> Path:
    """A folder laid out like the competition: test.csv + test_images/<id>.png (``missing`` has no image)."""
    import cv2

    (folder / "test_images").mkdir(parents=True)
    jpgs = sorted((sample_dir / "images").glob("*.jpg"))
    for rid, jpg in zip(ids, jpgs, strict=False):
        if rid != missing:
            cv2.imwrite(str(folder / "test_images" / f"{rid}.png"), cv2.imread(str(jpg)))
    (folder / "test.csv").write_text("id_code\n" + "".join(f"{i}\n" for i in ids))
    return folder


def test_verify_with_data_runs_on_the_competition_test_set_outside_the_bundle(bundle, run_dir, sample_dir,
                                                                              tmp_path, capsys):
    out, _ = bundle
    ids = ["0a1b2c3d4e5f", "0012", "NA", "ffa47f6a7bf4"]
    comp = _competition(tmp_path / "aptos2019-blindness-detection", sample_dir, ids, missing="ffa47f6a7bf4")
    assert kernel_cli.main([str(run_dir), "--out", str(out), "--no-build", "--verify", "--data", str(comp)]) == 0
    printed = capsys.readouterr().out
    assert f"[verify] test set: all 4 test ids of the competition data {comp} (test.csv + test_images/)" in printed
    assert "bundled sample" not in printed and "workspace removed" in printed
    report = json.loads((out / layout.VERIFY_REPORT).read_text())
    assert report["n_images"] == 4 and report["kept"] is False and str(comp) in report["test_set"]
    assert not Path(report["root"]).exists()  # the temp workspace is gone after success
    _bundle_holds_only_the_upload(out)


def test_competition_test_set_is_linked_as_written_and_limited(sample_dir, tmp_path):
    comp = _competition(tmp_path / "comp", sample_dir, ["0012", "NA", "abc"], missing="abc")
    ids, line = kernel_testset.prepare_test_set(tmp_path / "all", comp, None)
    assert ids == ["0012", "NA", "abc"] and line.startswith("all 3 test ids of the competition data")
    assert (tmp_path / "all" / "test.csv").read_bytes() == (comp / "test.csv").read_bytes()
    linked = sorted((tmp_path / "all" / "test_images").iterdir())
    assert [p.name for p in linked] == ["0012.png", "NA.png"] and all(p.is_symlink() for p in linked)
    ids, line = kernel_testset.prepare_test_set(tmp_path / "two", comp, None, limit=2)
    assert ids == ["0012", "NA"] and line.startswith("the first 2 of 3 test ids")
    assert (tmp_path / "two" / "test.csv").read_text() == "id_code\n0012\nNA\n"
    ids, line = kernel_testset.prepare_test_set(tmp_path / "sample", None, None, n_images=2)
    assert len(ids) == 2 and "bundled sample images" in line and "pass --data DIR" in line
    with pytest.raises(VerifyError, match="not the competition folder"):
        kernel_testset.prepare_test_set(tmp_path / "bad", tmp_path / "all" / "test_images", None)


def test_test_set_options_are_checked_before_the_build(sample_dir, tmp_path, monkeypatch, capsys):
    built = []
    monkeypatch.setattr(kernel_cli, "build", built.append)
    comp = _competition(tmp_path / "comp", sample_dir, ["a1"])
    for argv, says in [(["--data", str(comp)], "add --verify"),
                       (["--verify", "--verify-limit", "3"], "add --data DIR"),
                       (["--verify", "--data", str(comp), "--verify-images", str(comp)], "not allowed with"),
                       (["--verify", "--verify-limit", "0", "--data", str(comp)], "not a positive whole number")]:
        with pytest.raises(SystemExit) as exit_:
            kernel_cli.main(["run", "--owner", "me", *argv])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    assert kernel_cli.main(["run", "--owner", "me", "--verify", "--data", str(tmp_path)]) == 2
    assert "is not the competition folder (it lacks test.csv and test_images)" in capsys.readouterr().err
    assert kernel_cli.main(["run", "--owner", "me", "--verify", "--verify-images", str(comp)]) == 2
    assert f"pass it as --data {comp}" in capsys.readouterr().err
    assert built == []


def test_verify_names_a_missing_wheel(bundle, tmp_path):
    out, _ = bundle
    broken = tmp_path / "broken"
    shutil.copytree(out / "dataset", broken / "dataset", copy_function=os.link)
    shutil.copytree(out / "kernel", broken / "kernel")
    wheel = next((broken / "dataset" / "wheels").glob("efficientnet_lite_pytorch-*.whl"))
    wheel.unlink()
    with pytest.raises(VerifyError, match=f"wheels/{wheel.name} is listed in the manifest but missing") as err:
        kernel_verify.verify(broken, progress=False)
    assert err.value.step == "manifest"
    kernel_verify.write_manifest(broken)  # as if the bundle had been built without it
    with pytest.raises(VerifyError, match="wheel for efficientnet-lite-pytorch is missing from the bundle") as err:
        kernel_verify.verify(broken, progress=False)
    assert err.value.step == "kernel run"
    kept = Path(str(err.value).rsplit("verify workspace kept for inspection: ", 1)[1].rstrip(")"))
    assert (kept / "kernel.out.ipynb").is_file()  # a failed verify keeps its workspace, outside the bundle
    assert sorted(p.name for p in broken.iterdir()) == ["dataset", "kernel"]
    shutil.rmtree(kept)


def test_socket_guard_blocks_the_network_but_not_loopback(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(kernel_verify.BLOCK_SOCKETS)
    code = ("import socket\nsrv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen()\n"
            "socket.create_connection(srv.getsockname(), timeout=2).close(); print('loopback ok')\n"
            + kernel_verify.PROBE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines()[0] == "loopback ok" and out.splitlines()[1].startswith("blocked")


def test_dependency_closure_follows_undeclared_imports_and_stops_at_the_image():
    image, _ = kernel_image.image_distributions(kernel_image.read_image_list())
    need, missing = kernel_image.closure(["pretrainedmodels"], stop=image)
    bundled = {n for n in need if n not in image}
    assert bundled == {"pretrainedmodels", "munch", "six"} and missing == []
    assert need["six"] == "pretrainedmodels"  # imported but never declared
    assert {"torch", "torchvision", "tqdm"} <= set(need) and "sympy" not in need  # image deps are its business


def test_a_model_registered_outside_the_package_is_refused(tmp_path):
    fold = tmp_path / "tiny" / "fold0"
    fold.mkdir(parents=True)
    for name in layout.MODEL_FILES:
        (fold / name).write_text("{}")
    (fold / "config.json").write_text(json.dumps({"model": "efficientnet-lite0"}))
    assert kernel_bundle.inspect_run(tmp_path / "tiny").package == "efficientnet-lite-pytorch"
    from train_helpers import register_tiny_model

    (fold / "config.json").write_text(json.dumps({"model": register_tiny_model()}))
    with pytest.raises(BundleError, match="register it inside kaggle_utils"):
        kernel_bundle.inspect_run(tmp_path / "tiny")
    (fold / "oof.csv").unlink()
    with pytest.raises(BundleError, match=r"missing \['oof.csv'\]"):
        kernel_bundle.inspect_run(tmp_path / "tiny")


def test_build_refuses_bad_names_and_foreign_folders(run_dir, tmp_path):
    with pytest.raises(BundleError, match="between 6 and 50"):
        kernel_bundle.build(BundleSpec([run_dir], tmp_path / "a", owner="me", dataset_slug="abc"), progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(BundleError, match="not a kernel bundle"):
        kernel_bundle.build(BundleSpec([run_dir], tmp_path / "mine", owner="me"), progress=False)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep"


def test_wheel_normalisation_ignores_timestamps(tmp_path):
    def make(path, when):
        with zipfile.ZipFile(path, "w") as z:
            for name in ("pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg-1.0.dist-info/METADATA"):
                z.writestr(zipfile.ZipInfo(name, date_time=when), name)

    make(tmp_path / "a.whl", (2024, 5, 6, 7, 8, 10))
    make(tmp_path / "b.whl", (2025, 1, 2, 3, 4, 6))
    a = kernel_wheels.normalize_wheel(tmp_path / "a.whl", tmp_path / "out" / "a.whl")
    b = kernel_wheels.normalize_wheel(tmp_path / "b.whl", tmp_path / "out" / "b.whl")
    assert a.read_bytes() == b.read_bytes()
    assert [i.filename for i in zipfile.ZipFile(a).infolist()][-1] == "pkg-1.0.dist-info/RECORD"


def test_vendored_wheels_install_on_kaggle():
    for name, version in [("efficientnet-lite-pytorch", "0.1.0"), ("efficientnet-pytorch", "0.7.1"),
                          ("pretrainedmodels", "0.7.4"), ("munch", "4.0.0"), ("six", "1.17.0")]:
        assert kernel_wheels.cached_wheel(name, version) is not None, f"wheels/ lacks {name}=={version}"
    assert kernel_wheels.kaggle_compatible({"cp311-cp311-manylinux_2_17_x86_64"})
    assert not kernel_wheels.kaggle_compatible({"cp312-cp312-manylinux_2_17_x86_64", "py3-none-win_amd64"})


def test_plan_measures_scales_and_warns(run_dir, sample_dir, capsys):
    images = sorted((sample_dir / "images").glob("*.jpg"))[:2]
    p, table = kernel_plan.plan([run_dir], n_images=13_000, images=images)
    row = p["rows"][0]
    assert row["gflop"] > 0 and row["cpu_img_s"] > 0 and row["folds"] == 2 and row["size"] == 64
    assert row["passes"] == 13_000 * 2 * 2  # images x folds x hflip views
    assert p["total_s"] == pytest.approx(max(p["gpu_s"], p["cpu_s"]) + sum(p["overheads"].values()))
    assert "GPU comparison: not possible" in table and "4 vCPUs" in table and "ESTIMATE" in table
    assert "PNG decoder OpenCV, as the image lacks imagecodecs" in table  # timed as the kernel will decode
    assert decode.png_decoder().startswith("imagecodecs")  # the fast decoder is back after timing
    measured = [kernel_plan.RunMeasure(**{k: row[k] for k in ("name", "model", "size", "folds", "gflop", "cpu_img_s",
                                                          "load_s", "recipe")})]
    tight = kernel_plan.estimate(measured, preprocess_s=1.0, n_images=200_000, budget_h=9.0)
    assert not tight["fits"] and "WARNING" in kernel_plan.format_plan(tight)
    t4 = kernel_plan.estimate(measured, preprocess_s=1e-4, gpu="t4", fraction=0.5)
    assert t4["gpu_s"] < p["gpu_s"]
    assert kernel_cli.main([str(run_dir), "--no-build", "--plan", "--images", "1000",
                        "--plan-images", str(sample_dir / "images")]) == 0
    assert "Kernel run-time plan: 1,000 test images" in capsys.readouterr().out


def _fake_run(folder: Path) -> Path:
    (folder / "fold0").mkdir(parents=True)
    (folder / "fold0" / "best.pt").write_bytes(b"x")
    return folder


def test_the_runs_lookup_never_offers_a_folder_inside_a_bundle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_run(tmp_path / "outputs" / "kernel_bundle" / "dataset" / "models" / "lite0")
    (tmp_path / "outputs" / "kernel_bundle" / "dataset" / "dataset-metadata.json").write_text("{}")
    _fake_run(tmp_path / "outputs" / "copied" / "models" / "b0")  # known as a bundle by its build report alone
    (tmp_path / "outputs" / "copied" / layout.REPORT).write_text("{}")
    runs, msg = kernel_cli.latest_chain_runs()
    assert runs == [] and "none found under outputs/" in msg and "kernel_bundle" not in msg
    _fake_run(tmp_path / "outputs" / "mine" / "lite0")
    runs, msg = kernel_cli.latest_chain_runs()
    assert runs == [] and "run folders found:\n  outputs/mine/lite0\nname the ones" in msg
    assert layout.inside_bundle(Path("outputs/copied/models/b0"), Path("outputs"))
    assert not layout.inside_bundle(Path("outputs/mine/lite0"), Path("outputs"))


def test_build_refuses_run_folders_inside_the_bundle_it_would_empty(tmp_path):
    out = tmp_path / "kernel_bundle"
    run = _fake_run(out / "dataset" / "models" / "lite0")
    with pytest.raises(BundleError, match="lie inside --out .* which the build empties first"):
        kernel_bundle.build(BundleSpec([run], out, owner="me"), progress=False)
    assert (run / "fold0" / "best.pt").is_file()


def _run_code_cells(nb: dict, out_dir: Path) -> None:
    """Run a notebook's code cells as papermill does: its values injected right after the parameters cell."""
    scope: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(cell["source"], scope)  # noqa: S102 - our own notebook
            if "parameters" in cell["metadata"].get("tags", []):
                exec(f"out_dir = {str(out_dir)!r}", scope)  # noqa: S102


def test_a_failed_kernel_run_leaves_no_older_submission(tmp_path, monkeypatch):
    """Stopped by the first failure it can meet (the offline install), an interrupt being no later: the
    earlier run's submission.csv is gone; the new one is only ever written whole (a temp file renamed)."""
    monkeypatch.setenv(layout.INPUT_ENV, str(tmp_path / "input"))
    stale = tmp_path / "working" / "submission.csv"
    stale.parent.mkdir()
    stale.write_text("id_code,diagnosis\nold,2\n")
    nb = json.loads(kernel_bundle.render_notebook({"DATASET": "nothing-here", "PACKAGES": ["no-such-package-x"]},
                                                  {"models_dir": str(tmp_path / "models")}))
    with pytest.raises(RuntimeError, match="offline install failed"):
        _run_code_cells(nb, stale.parent)
    assert not stale.exists()
    last = [c["source"] for c in nb["cells"] if "submission.csv" in c["source"]][-1]
    assert 'ensemble.write_submission(result.submission, Path(out_dir) / "submission.csv")' in last
    assert ".to_csv(" not in last  # write_submission goes through io.write_csv: temp file + rename
