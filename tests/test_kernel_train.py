"""The training bundle (build_kernel.py --train): what it holds, byte for byte the same twice, the smoke
override as one pure function, the hand-over of a training kernel's output to the submission bundle (on a
stand-in laid out like it), and, slow, the README's command: the smoke run offline in an emulated image."""

import copy
import functools
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kaggle_utils.kernel import __main__ as kernel_cli
from kaggle_utils.kernel import bundle as kernel_bundle
from kaggle_utils.kernel import handover, layout, notebook, train_verify, training
from kaggle_utils.kernel.bundle import BundleSpec
from kaggle_utils.kernel.layout import BundleError
from kaggle_utils.kernel.notebook import install_cell
from kaggle_utils.kernel.train_bundle import TrainBundleSpec, build_training
from kaggle_utils.run.config import load_config

REPO = Path(__file__).resolve().parents[1]
QUICK, GPU = REPO / "configs" / "kaggle_quickstart.yaml", REPO / "configs" / "kaggle_gpu.yaml"
LITE0 = "efficientnet-lite0-57934424.pth"


def _config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def quick_bundle(quick_train_bundle):
    return quick_train_bundle  # conftest.py: built once, Kaggle's client checks it too


# ------------------------------------------------------------------------------------------ the bundle
def test_training_bundle_holds_what_the_kernel_needs(quick_bundle):
    out, report = quick_bundle
    ds = out / "dataset"
    files = sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*") if p.is_file())
    wheels = [f for f in files if f.startswith("wheels/")]
    assert [f.split("/")[1].split("-")[0] for f in wheels] == ["efficientnet_lite_pytorch", "kaggle_utils"]
    assert files == sorted([*wheels, "config/kaggle_quickstart.yaml", "dataset-metadata.json", "manifest.json",
                            *(f"notebooks/{n}.ipynb" for n in layout.CHAIN_NOTEBOOKS),
                            f"weights/{LITE0}", "weights/manifest.json"])
    assert (ds / "config" / "kaggle_quickstart.yaml").read_bytes() == QUICK.read_bytes()
    for name in layout.CHAIN_NOTEBOOKS:
        assert (ds / "notebooks" / f"{name}.ipynb").read_bytes() == (REPO / "notebooks" / f"{name}.ipynb").read_bytes()
    # the lite0 ImageNet file from its PyPI wheel, with its full sha256 in both manifests
    from kaggle_utils.models import weights

    lite0 = weights.resolve_weights("efficientnet-lite0")
    assert (ds / "weights" / LITE0).read_bytes() == lite0.read_bytes()
    wmanifest = json.loads((ds / "weights" / "manifest.json").read_text())
    manifest = json.loads((ds / "manifest.json").read_text())
    assert wmanifest["efficientnet-lite0"]["sha256"] == manifest["files"][f"weights/{LITE0}"]["sha256"] \
        == weights.sha256_file(lite0)
    assert manifest["kind"] == "training" and manifest["config"] == "kaggle_quickstart.yaml"
    assert sorted(manifest["kernel_files"]) == ["kernel-metadata.json", "train_kernel.ipynb"]
    assert report["sizes"]["weights"] > 18e6 and report["unattached_inputs"] == []
    assert "torch" in report["assumed_on_kaggle_image"]


def test_training_kernel_metadata_and_notebook(quick_bundle):
    out, _ = quick_bundle
    kmeta = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    assert kernel_bundle.validate_kernel_metadata(kmeta, out / "kernel") == []
    assert (kmeta["enable_gpu"], kmeta["enable_tpu"], kmeta["enable_internet"]) == (True, False, False)
    assert kmeta["machine_shape"] == "NvidiaTeslaT4"  # T4 x2: the config's `accelerator: t4x2`
    assert kmeta["id"] == "tester/kaggle-utils-train-kaggle-quickstart"
    assert kmeta["competition_sources"] == ["aptos2019-blindness-detection"]
    assert kmeta["dataset_sources"] == ["tester/kaggle-utils-train-kaggle-quickstart"]
    assert kmeta["code_file"] == "train_kernel.ipynb"
    cells = json.loads((out / "kernel" / "train_kernel.ipynb").read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert 'config = "/kaggle/input/kaggle-utils-train-kaggle-quickstart/config/kaggle_quickstart.yaml"' in code[0]
    assert "smoke = False" in code[0] and "plan = True" in code[0]  # the default plans, and trains in full
    assert "require_gpu = True  # stop when there is no CUDA device" in code[0]  # a GPU kernel; comment kept
    install = _install_cell(cells)
    assert install == install_cell("kaggle-utils-train-kaggle-quickstart", ["kaggle_utils", "efficientnet-lite-pytorch"])
    assert '"--no-index"' in install and code.index(install) == 2  # after the parameters and the clock
    assert "started = time.time()" in code[1]  # the budget counts from before the install
    assert not any("kaggle_utils import" in c for c in code[:3])
    assert any('"--plan", "--measure"' in c for c in code) and any("run_chain(" in c for c in code)


def _install_cell(cells: list[dict]) -> str:
    (cell,) = [c for c in cells if notebook.TAG in c["metadata"].get("tags", [])]
    return "".join(cell["source"])


@pytest.mark.parametrize("name, dataset", [("kernel", "kaggle-utils-aptos-models"),
                                           ("train_kernel", "kaggle-utils-train")])
def test_both_kernels_carry_the_one_offline_install_cell(name, dataset):
    """One source (kernel/notebook.py): each repository notebook, .py and .ipynb, holds it rendered
    with its placeholders, so what is read and linted here is what the builder writes into the bundle."""
    expected = install_cell(dataset, ["kaggle_utils"])
    paired = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())["cells"]
    assert _install_cell(paired) == expected, f"notebooks/{name}: install cell differs from kaggle_utils/kernel/notebook.py"
    import jupytext

    source = jupytext.read(REPO / "notebooks" / f"{name}.py")
    assert _install_cell([{"metadata": c.metadata, "source": c.source} for c in source.cells]) == expected
    rendered = json.loads(kernel_bundle.render_notebook({"DATASET": "my-data", "PACKAGES": ["kaggle_utils", "x"]},
                                                        {}, REPO / "notebooks" / f"{name}.py"))["cells"]
    assert _install_cell(rendered) == install_cell("my-data", ["kaggle_utils", "x"])


def test_a_notebook_without_its_install_cell_or_importing_first_is_refused(tmp_path):
    text = (REPO / "notebooks" / "kernel.py").read_text()
    for broken, says in [(text.replace('tags=["offline-install"]', ""), "exactly one code cell tagged"),
                         (text.replace("import os\n\nstale", "import kaggle_utils\nimport os\n\nstale"),
                          "imports kaggle_utils, which it installs")]:
        assert broken != text
        (tmp_path / "nb.py").write_text(broken)
        with pytest.raises(BundleError, match=says):
            kernel_bundle.render_notebook({"DATASET": "d", "PACKAGES": []}, {}, tmp_path / "nb.py")


def test_the_paired_training_notebook_is_in_sync():
    import jupytext

    paired = json.loads((REPO / "notebooks" / "train_kernel.ipynb").read_text())
    source = jupytext.read(layout.TRAIN_NOTEBOOK)
    assert ["".join(c["source"]) for c in paired["cells"]] == [c.source for c in source.cells]


def test_two_training_builds_are_identical(quick_bundle, tmp_path):
    out, report = quick_bundle
    again = build_training(TrainBundleSpec(QUICK, tmp_path / "again", owner="tester"), progress=False)
    assert again["bundle_sha256"] == report["bundle_sha256"]
    for path in sorted((out / "dataset").rglob("*")) + sorted((out / "kernel").rglob("*")):
        if path.is_file():
            assert (tmp_path / "again" / path.relative_to(out)).read_bytes() == path.read_bytes(), path


def test_missing_weights_name_the_file_and_where_before_anything_is_written(tmp_path):
    with pytest.raises(BundleError) as err:
        build_training(TrainBundleSpec(GPU, tmp_path / "out", owner="tester"), progress=False)
    text = str(err.value)
    assert "efficientnet-b2-8bb594d6.pth" in text and str(REPO / "weights") in text
    assert "python -m kaggle_utils.models download efficientnet-b2" in text and "--weights-dataset" in text
    assert not (tmp_path / "out").exists()


def test_gpu_bundle_attaches_its_datasets_and_expects_its_weights_from_one(tmp_path):
    spec = TrainBundleSpec(GPU, tmp_path / "out", owner="tester", attach=["someone/diabetic-retinopathy-resized"],
                           weights_datasets=["tester/imagenet-weights"])
    report = build_training(spec, progress=False)
    kmeta = json.loads((tmp_path / "out" / "kernel" / "kernel-metadata.json").read_text())
    assert kmeta["dataset_sources"] == ["tester/kaggle-utils-train-kaggle-gpu", "someone/diabetic-retinopathy-resized",
                                        "tester/imagenet-weights"]
    assert report["unattached_inputs"] == ["idrid"]  # the build warns: attach it in the editor or --attach
    assert sorted(w["name"] for w in report["wheels"]) == ["efficientnet-pytorch", "kaggle-utils", "munch",
                                                           "pretrainedmodels", "six"]
    wmanifest = json.loads((tmp_path / "out" / "dataset" / "weights" / "manifest.json").read_text())
    assert sorted(wmanifest) == ["efficientnet-b2", "efficientnet-b3", "efficientnet-b4", "se_resnext50_32x4d"]
    assert [w["name"] for w in report["weights_from_attached_datasets"]] == sorted(wmanifest)


def test_a_config_a_kernel_cannot_run_is_refused(tmp_path):
    with pytest.raises(BundleError, match=r"is not under /kaggle/input/.*workdir 'outputs/demo'"):
        build_training(TrainBundleSpec(REPO / "configs" / "demo.yaml", tmp_path / "out"), progress=False)


def test_cli_keeps_the_two_bundles_options_apart(capsys):
    for argv, says in [(["--train", str(QUICK), "some/run"], "run folders: only for the submission bundle"),
                       (["--train", str(QUICK), "--kernel-source", "a/bcdef"], "--kernel-source: only for the"),
                       (["some/run", "--attach", "a/b"], "--attach: only with --train")]:
        with pytest.raises(SystemExit) as exit_:
            kernel_cli.main(argv)
        assert exit_.value.code == 2 and says in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ smoke override
@pytest.mark.parametrize("path", [QUICK, GPU, REPO / "configs" / "aptos_cpu.yaml"])
def test_smoke_is_one_pure_rewrite_of_the_config_that_the_chain_accepts(path):
    cfg = _config(path)
    before = copy.deepcopy(cfg)
    smoke = training.smoke_config(cfg)
    assert cfg == before  # pure
    load_config(smoke, plan_only=True)  # still a valid chain config
    assert smoke["folds"]["n_folds"] == 2 and smoke["preprocess"]["size"] == 96
    assert smoke["train"]["epochs"] == 1 and smoke["train"]["max_steps_per_epoch"] == 2
    assert smoke["train"].get("size_schedule") is None
    for m in smoke["models"]:
        assert (m["epochs"], m["size"], m["max_steps_per_epoch"]) == (1, 96, 2) and "sizes" not in m
        assert m.get("size_schedule") is None  # a schedule needs more epochs than the smoke's one
        assert len(m.get("seeds") or [0]) == 1
    limits = {s["name"]: s["max_rows"] for s in smoke["data"]["sources"]}
    roles = {s["name"]: s.get("role", "competition") for s in smoke["data"]["sources"]}
    assert all(n == (40 if roles[k] == "competition" else 20) for k, n in limits.items())
    assert smoke["test"] == cfg["test"] if "test" in cfg else True  # every test image is still graded
    if cfg.get("pretrain"):
        assert smoke["pretrain"]["epochs"] == 1


def test_model_needs_and_mounts_read_the_config_as_the_chain_does():
    cfg = _config(GPU)
    needs = training.model_needs(cfg)
    assert [(n.model, n.pretrained) for n in needs] == [("se_resnext50_32x4d", True), ("efficientnet-b2", True),
                                                        ("efficientnet-b3", True), ("efficientnet-b4", True)]
    assert training.external_mounts(cfg) == ["diabetic-retinopathy-resized", "idrid"]
    assert training.competition_mount(cfg) == "aptos2019-blindness-detection" and training.not_on_kaggle(cfg) == []
    quick = _config(QUICK)
    assert [(n.model, n.pretrained) for n in training.model_needs(quick)] == [("efficientnet-lite0", True)]
    assert training.source_dicts(quick)[0]["role"] == "competition" and training.external_mounts(quick) == []


def test_epoch_times_and_pruning(tmp_path):
    work = tmp_path / "aptos"
    for run, times in (("runs/lite0/fold0", [3.0, 5.0]), ("pretrain/lite0", [10.0])):
        (work / run).mkdir(parents=True)
        pd.DataFrame({"epoch": range(1, len(times) + 1), "time": times}).to_csv(work / run / "metrics.csv", index=False)
        (work / run / "best.pt").write_bytes(b"b")
        (work / run / "last.pt").write_bytes(b"l" * 10)
    (work / "cache0" / "aptos" / "images").mkdir(parents=True)
    (work / "cache0" / "aptos" / "images" / "a.png").write_bytes(b"p" * 5)
    rows = training.epoch_times(work)
    assert [(r["run"], r["epochs"], r["mean_s"]) for r in rows] == [("runs/lite0/fold0", 2, 4.0), ("pretrain/lite0", 1, 10.0)]
    assert "measured epoch times on GPU X" in training.format_epoch_times(rows, "GPU X")
    assert training.prune_outputs(work) == {"files": 3, "bytes": 25}
    assert not list(work.rglob("last.pt")) and not (work / "cache0").exists()
    assert (work / "runs/lite0/fold0/best.pt").is_file() and (work / "runs/lite0/fold0/metrics.csv").is_file()


# ------------------------------------------------------------------------------------------ emulated input
@pytest.mark.parametrize("path", [QUICK, GPU])
def test_emulated_input_is_what_the_config_reads(path, tmp_path):
    from kaggle_utils.data.assemble import load_specs, parse_sources

    cfg = train_verify.relocate(_config(path), tmp_path)
    assert cfg["workdir"].startswith(str(tmp_path / "kaggle" / "working"))
    ids, said = train_verify.emulate_inputs(cfg)
    load_config(cfg)  # every file the config names is there
    table, skipped = load_specs(parse_sources(cfg["data"]))
    assert skipped.empty and table[table["role"] == "competition"]["grade"].value_counts().tolist() == [6] * 5
    assert len(ids) == 10 and pd.read_csv(cfg["test"]["csv"], dtype=str)["id_code"].tolist() == ids
    assert all(Path(cfg["test"]["images"], f"{i}.png").is_file() for i in ids)
    assert len(said) == len(cfg["data"].get("sources", [1])) + 1
    cold = train_verify.without_weights(cfg, {"efficientnet-b2"})
    assert [m.get("pretrained") for m in cold["models"]] == [m.get("pretrained") if m["model"] != "efficientnet-b2"
                                                            else False for m in cfg["models"]]


# ------------------------------------------------------------------------------------------ hand-over
def _stand_in(root: Path, runs: tuple[str, ...] = ("lite0",)) -> Path:
    """A folder laid out like `kaggle kernels output OWNER/SLUG -p root`: the chain's workdir `aptos` with
    run_log.json and runs/<run>/fold<k>/{best.pt, config.json, oof.csv} (placeholder checkpoints: the build
    copies them byte for byte; the slow test below hands over real ones)."""
    work = root / "aptos"
    work.mkdir(parents=True)
    (work / "run_log.json").write_text(json.dumps({"steps": {}}))
    for run in runs:
        for fold in (0, 1):
            d = work / "runs" / run / f"fold{fold}"
            d.mkdir(parents=True)
            (d / "best.pt").write_bytes(f"{run}{fold}".encode())
            (d / "config.json").write_text(json.dumps({"model": "efficientnet-lite0"}))
            (d / "oof.csv").write_text("id,grade,pred,fold\na,0,0.1,0\n")
    return root


def test_a_downloaded_training_output_is_a_submission_bundle_input(tmp_path):
    out = _stand_in(tmp_path / "kaggle_train")
    run = out / "aptos" / "runs" / "lite0"
    for given in (out, out / "aptos", run):
        assert handover.expand_runs([given])[0] == [run]
    assert kernel_cli.main([str(out), "--out", str(tmp_path / "bundle"), "--owner", "me"]) == 0
    models = tmp_path / "bundle" / "dataset" / "models" / "lite0"
    assert (models / "fold1" / "best.pt").read_bytes() == (run / "fold1" / "best.pt").read_bytes()


def test_an_attached_training_kernel_is_read_where_kaggle_mounts_it(tmp_path):
    out = _stand_in(tmp_path / "kaggle_train", runs=("lite0", "lite0_b"))
    runs = sorted((out / "aptos" / "runs").iterdir())
    spec = BundleSpec(runs, tmp_path / "bundle", owner="me", kernel_source="me/aptos-train")
    report = kernel_bundle.build(spec, progress=False)
    assert not (tmp_path / "bundle" / "dataset" / "models").exists()
    kmeta = json.loads((tmp_path / "bundle" / "kernel" / "kernel-metadata.json").read_text())
    assert kmeta["kernel_sources"] == ["me/aptos-train"] and kernel_bundle.validate_kernel_metadata(kmeta) == []
    cells = json.loads((tmp_path / "bundle" / "kernel" / "kernel.ipynb").read_text())["cells"]
    params = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    assert 'models_dir = "/kaggle/input/aptos-train/aptos/runs"' in params
    assert report["kernel_source"]["local"] == str((out / "aptos" / "runs").resolve())
    with pytest.raises(BundleError, match="grades with every run"):  # a subset: the kernel would read them all
        kernel_bundle.build(BundleSpec(runs[:1], tmp_path / "b2", owner="me", kernel_source="me/aptos-train"))
    loose = tmp_path / "loose" / "lite0"
    shutil.copytree(runs[0], loose)
    with pytest.raises(BundleError, match="lies in no chain folder"):
        kernel_bundle.build(BundleSpec([loose], tmp_path / "b3", owner="me", kernel_source="me/aptos-train"))


# ------------------------------------------------------------------------------------------ end to end
def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Train on Kaggle\n"):]
    section = section[:section.index("\n## ", 1)]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.startswith("#")]


@pytest.mark.slow
def test_readme_train_on_kaggle_runs_offline_and_hands_over(tmp_path, monkeypatch, capsys):
    """The README's commands as written (Kaggle's own CLI aside): the training bundle of the quick-start
    config, verified offline with the smoke override; then its kernel's output (the verify's emulated
    /kaggle/working, real checkpoints) into the submission bundle, downloaded and attached, verified too."""
    build, *rest = _readme_commands()
    assert build.startswith("python build_kernel.py --train configs/kaggle_quickstart.yaml") and "--verify" in build
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.setattr(train_verify, "verify_training", functools.partial(train_verify.verify_training, keep=True))
    assert kernel_cli.main(build.split()[2:]) == 0
    said = capsys.readouterr().out
    assert "[verify] OK (smoke)" in said and "lite0 (efficientnet-lite0, 2 folds)" in said
    bundle = tmp_path / "outputs" / "train_bundle_kaggle_quickstart"
    report = json.loads((bundle / layout.VERIFY_REPORT).read_text())
    assert report["checked"]["submission_rows"] == 10 and report["weights_not_checked"] == []
    assert report["installed_from_bundle"] == ["efficientnet-lite-pytorch", "kaggle-utils"] and report["plan"]
    working = Path(report["root"]) / "kaggle" / "working"
    try:
        # downloaded: `kaggle kernels output ... -p outputs/kaggle_train` leaves /kaggle/working's files there
        shutil.copytree(working, tmp_path / "outputs" / "kaggle_train")
        hand = next(c for c in rest if c.startswith("python build_kernel.py outputs/kaggle_train"))
        assert kernel_cli.main(hand.split()[2:]) == 0
        assert sorted(p.name for p in (tmp_path / "outputs" / "kernel_bundle" / "dataset" / "models").iterdir()) \
            == ["lite0"]
        # attached as a kernel source: the kernel reads the checkpoints where Kaggle mounts them, offline
        assert kernel_cli.main(["outputs/kaggle_train", "--kernel-source", "me/kaggle-utils-train-kaggle-quickstart",
                                "--out", "outputs/kernel_bundle_ks", "--owner", "me", "--verify"]) == 0
        assert "[verify] OK" in capsys.readouterr().out
    finally:
        shutil.rmtree(report["root"], ignore_errors=True)
    assert os.path.isdir(tmp_path / "outputs" / "kernel_bundle_ks" / "dataset" / "wheels")
