"""``build_kernel.py --train CONFIG --verify``: run the training kernel offline, with the smoke override, in
the emulated Kaggle image of :mod:`.verify`, on a small real sample laid out as the config's sources.

What it emulates: ``/kaggle/input/<bundle>`` is the built dataset; the config's competition source becomes
``train.csv`` + ``train_images/*.png`` and ``test.csv`` + ``test_images/*.png`` made from the bundled IDRiD
photographs (``data/sample``), and each external source a few images in its reader's own layout (EyePACS and
IDRiD from ``../shared/data`` when it is there, else more of the sample). The config's ``/kaggle/...`` paths
are moved under the temp root; weights that the bundle expects from an attached dataset are not on this
machine, so those models train from random init and the report says so. Then the notebook runs with
``smoke=True`` and what it wrote is checked: every chain step finished, each model's checkpoints and OOF,
a submission row with a grade 0-4 for every test id, the epoch times printed, the output pruned, runs the
submission bundle accepts, and only the bundle's wheels installed.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggle_utils import io
from kaggle_utils.kernel.layout import IMAGE_LIST, MANIFEST, REPO_ROOT, VerifyError
from kaggle_utils.kernel.training import model_needs, read_config, smoke_config, source_dicts
from kaggle_utils.kernel.verify import (
    check_submission,
    emulate_image,
    in_workspace,
    installed_from_bundle,
    run_notebook,
)

SAMPLE = REPO_ROOT / "data" / "sample"
SHARED = REPO_ROOT.parent / "shared" / "data"
# reader -> (id column, grade column, default image extension): the label files as each dataset ships them
LAYOUTS = {"aptos": ("id_code", "diagnosis", ".png"), "eyepacs": ("image", "level", ".jpeg"),
           "idrid": ("id_code", "diagnosis", ".jpg"), "messidor": ("image_id", "adjudicated_dr_grade", "")}
SHARED_COPIES = {"eyepacs": ("eyepacs1024/trainLabels.csv", "eyepacs1024/images", "image", "level", ".jpeg"),
                 "idrid": ("idrid_train/labels.csv", "idrid_train/images", "id_code", "diagnosis", ".jpg")}
TRAIN_PER_GRADE, TEST_PER_GRADE, EXTERNAL_PER_GRADE = 6, 2, 2


# ------------------------------------------------------------------------------------------ emulated input
def _by_grade(rows: list[tuple[str, int, Path]], start: int, n: int) -> list[tuple[str, int, Path]]:
    """``n`` rows of each grade from the ``start``-th of that grade on (file order: deterministic)."""
    out = []
    for grade in sorted({g for _, g, _ in rows}):
        out += [r for r in rows if r[1] == grade][start:start + n]
    return out


def sample_rows() -> list[tuple[str, int, Path]]:
    """(id, grade, photograph) of the bundled IDRiD sample, 12 per grade."""
    table = io.read_csv(SAMPLE / "labels.csv")
    return [(i, int(g), SAMPLE / "images" / f"{i}.jpg") for i, g in zip(table["id_code"], table["diagnosis"],
                                                                        strict=True)]


def shared_rows(reader: str, per_grade: int) -> list[tuple[str, int, Path]]:
    """A few real images of an external dataset from ``../shared/data`` (its own layout), or []."""
    if reader not in SHARED_COPIES:
        return []
    csv, images, id_col, grade_col, ext = SHARED_COPIES[reader]
    if not (SHARED / csv).is_file():
        return []
    table = io.read_csv(SHARED / csv)
    taken = {i for i, _, _ in sample_rows()}  # the competition stand-in's photographs (IDRiD too): no duplicates
    rows = [(i, int(g), SHARED / images / f"{i}{ext}") for i, g in zip(table[id_col], table[grade_col], strict=True)
            if i not in taken and (SHARED / images / f"{i}{ext}").is_file()]
    return _by_grade(rows, 0, per_grade)


def _write_image(src: Path, dest: Path) -> None:
    import cv2

    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() == dest.suffix.lower():
        shutil.copyfile(src, dest)
    elif not cv2.imwrite(str(dest), cv2.imread(str(src), cv2.IMREAD_COLOR)):
        raise VerifyError("emulated input", f"cannot write {dest} from {src}")


def write_source(rows: list[tuple[str, int, Path]], reader: str, csv: Path, images: Path, ext: str | None) -> None:
    """``rows`` as ``reader``'s label file and image folder (its column names and image extension)."""
    import pandas as pd

    if reader not in LAYOUTS:
        raise VerifyError("emulated input", f"cannot emulate a {reader!r} source (readers: {sorted(LAYOUTS)}): "
                                            "verify on a config whose sources use those")
    id_col, grade_col, default_ext = LAYOUTS[reader]
    ext = default_ext if ext is None else ext
    names = [f"{i}.png" if reader == "messidor" else str(i) for i, _, _ in rows]  # Messidor ids name the file
    for name, (_, _, src) in zip(names, rows, strict=True):
        _write_image(src, images / f"{name}{ext}")
    io.write_csv(csv, pd.DataFrame({id_col: names, grade_col: [g for _, g, _ in rows]}))


def emulate_inputs(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Write every source and the test set the (relocated) config reads; returns the test ids and a line per
    source saying what stands in for it."""
    import pandas as pd

    sample = sample_rows()
    pool = _by_grade(sample, TRAIN_PER_GRADE + TEST_PER_GRADE, 12)
    said = []
    for s in source_dicts(cfg):
        reader = str(s.get("reader", s["name"])).lower()
        if s.get("role", "competition") == "competition":
            rows, what = _by_grade(sample, 0, TRAIN_PER_GRADE), "IDRiD sample photographs"
        else:
            rows, what = shared_rows(reader, EXTERNAL_PER_GRADE), f"{reader} images from {SHARED}"
            if not rows:
                rows, what = _by_grade(pool, 0, EXTERNAL_PER_GRADE), "IDRiD sample photographs"
        write_source(rows, reader, Path(s["csv"]), Path(s["images"]), s.get("ext"))
        said.append(f"{s['name']} ({s.get('role', 'competition')}): {len(rows)} {what} as {reader} files")
    test = cfg.get("test") or {}
    ids: list[str] = []
    if test.get("csv"):
        rows = _by_grade(sample, TRAIN_PER_GRADE, TEST_PER_GRADE)
        for i, _, src in rows:
            _write_image(src, Path(test["images"]) / f"{i}{test.get('ext', '.png')}")
        ids = [i for i, _, _ in rows]
        io.write_csv(test["csv"], pd.DataFrame({"id_code": ids}))
        said.append(f"test: {len(ids)} IDRiD sample photographs as test.csv + test_images/")
    return ids, said


def relocate(value: Any, root: Path) -> Any:
    """``value`` (a config) with every ``/kaggle/...`` path moved under ``root`` (``root/kaggle/...``)."""
    if isinstance(value, dict):
        return {k: relocate(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, root) for v in value]
    if isinstance(value, str) and value.startswith("/kaggle/"):
        return str(root / value.lstrip("/"))
    return value


def without_weights(cfg: dict[str, Any], models: set[str]) -> dict[str, Any]:
    """The config with the models whose weights are not on this machine starting from random init."""
    cold = {n.name for n in model_needs(cfg) if n.model in models}
    return {**cfg, "models": [{**m, "pretrained": False} if m["name"] in cold else m for m in cfg["models"]]}


# ------------------------------------------------------------------------------------------ checks
def check_output(cfg: dict[str, Any], ids: list[str], printed: str, plan: bool) -> dict[str, Any]:
    """What the smoke run must have written (``cfg`` is the smoke config the notebook ran)."""
    from kaggle_utils.kernel.bundle import inspect_run

    work = Path(cfg["workdir"])
    log_path = work / "run_log.json"
    if not log_path.is_file():
        raise VerifyError("training output", f"no {log_path}: the chain did not run")
    steps = io.read_json(log_path)["steps"]
    bad = {k: v["status"] for k, v in steps.items() if v["status"] != "ok"}
    if bad:
        raise VerifyError("training output", f"chain steps did not finish: {bad}")
    runs = {}
    for m in cfg["models"]:
        run = work / "runs" / m["name"]
        folds = sorted(run.glob("fold*"))
        missing = [f"{f.name}/{n}" for f in folds for n in ("best.pt", "oof.csv", "config.json")
                   if not (f / n).is_file()]
        if not folds or missing:
            raise VerifyError("training output", f"{run}: missing {missing or 'every fold'}")
        if any(io.read_csv(f / "oof.csv").empty for f in folds):
            raise VerifyError("training output", f"{run}: an empty oof.csv")
        runs[m["name"]] = {"folds": [f.name for f in folds], "model": inspect_run(run).model}
        if m.get("pretrain") and not (work / "pretrain" / m["name"] / "best.pt").is_file():
            raise VerifyError("training output", f"stage 1 of {m['name']} left no pretrain/{m['name']}/best.pt")
    if ids:
        check_submission(work / "blend" / "submission.csv", ids)
    leftovers = sorted(str(p) for p in [*work.rglob("last.pt"), *work.glob("cache*")])
    if leftovers:
        raise VerifyError("training output", f"pruning left {leftovers[:5]}")
    for marker, what in (("measured epoch times on", "the epoch times"), ("hand-over", "the hand-over lines")):
        if marker not in printed:
            raise VerifyError("training output", f"the notebook did not print {what}")
    if plan and "[plan] the plan measured on" not in printed:
        raise VerifyError("training output", "the notebook did not run the measured plan")
    return {"steps": len(steps), "runs": runs, "submission_rows": len(ids)}


# ------------------------------------------------------------------------------------------ verify
@dataclass
class TrainVerifyReport:
    ok: bool
    network: str
    seconds: dict[str, float]
    root: str
    inputs: list[str]
    checked: dict[str, Any]
    weights_not_checked: list[str]
    installed_from_bundle: list[str]
    plan: bool
    kept: bool = False

    def summary(self) -> str:
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items())
        runs = ", ".join(f"{k} ({v['model']}, {len(v['folds'])} folds)" for k, v in self.checked["runs"].items())
        lines = [f"[verify] OK (smoke): {self.checked['steps']} chain steps, runs {runs}; checkpoints + OOF; "
                 f"submission covers {self.checked['submission_rows']} test ids; network blocked by {self.network}; "
                 f"installed from the bundle only: {self.installed_from_bundle}; {steps}"]
        lines += [f"[verify] input {line}" for line in self.inputs]
        if not self.plan:
            lines.append("[verify] the plan step was skipped (plan=False)")
        if self.weights_not_checked:
            lines.append(f"[verify] NOT checked: ImageNet weights {self.weights_not_checked} (expected from an "
                         "attached dataset, not on this machine): those models trained from random init here")
        return "\n".join(lines)


def verify_training(out: str | os.PathLike, python: str | None = None, network: str = "auto",
                    timeout: int = 3600, image_list: Path = IMAGE_LIST, progress: bool = True,
                    keep: bool = False, plan: bool = True) -> TrainVerifyReport:
    """Install the training bundle into a fresh venv that sees only the assumed Kaggle image, run its
    notebook offline with the smoke override on an emulated ``/kaggle/input``, check what it wrote. Raises
    :class:`VerifyError` naming the step; the temp workspace is kept after a failure (the error names it).
    Only ``verify_report.json`` is written to ``out``."""
    say = print if progress else (lambda *a, **k: None)
    return in_workspace(out, "kaggle_utils_train_verify_", keep, say, lambda root, bundle: _verify_in(
        root, bundle, python, network, timeout, image_list, say, plan))


def _verify_in(root: Path, out: Path, python: str | None, network: str, timeout: int, image_list: Path,
               say: Any, plan: bool) -> TrainVerifyReport:
    import yaml

    seconds: dict[str, float] = {}
    t = time.time()
    manifest = io.read_json(out / "dataset" / MANIFEST)
    build = io.read_json(out / "build_report.json")
    kaggle = root / "kaggle"
    (kaggle / "input").mkdir(parents=True)
    (kaggle / "working").mkdir()
    (kaggle / "input" / manifest["dataset"].split("/")[1]).symlink_to(out / "dataset", target_is_directory=True)
    missing = sorted({w["name"] for w in build.get("weights_from_attached_datasets", [])})
    cfg = without_weights(relocate(read_config(out / "dataset" / "config" / manifest["config"]), root), set(missing))
    ids, inputs = emulate_inputs(cfg)
    config = io.write_text(root / manifest["config"], yaml.safe_dump(cfg, sort_keys=False))
    for line in inputs:
        say(f"[verify] input {line}")
    seconds["layout"] = time.time() - t

    t = time.time()
    image = emulate_image(root, kaggle, python, network, image_list)
    seconds["venv+image"] = time.time() - t
    say(f"[verify] venv sees {len(image.linked)} image distributions; network: {image.network}; running the "
        "training kernel with smoke=True")

    t = time.time()
    params = {"config": str(config), "smoke": True, "plan": plan, "require_gpu": False,
              "out_dir": str(kaggle / "working")}
    printed = run_notebook(out / "kernel" / "train_kernel.ipynb", root / "train_kernel.out.ipynb", params,
                           kaggle / "working", image, timeout)
    seconds["kernel run"] = time.time() - t

    t = time.time()
    checked = check_output(smoke_config(cfg), ids, printed, plan)
    ours = installed_from_bundle(image, manifest)
    seconds["checks"] = time.time() - t
    return TrainVerifyReport(True, image.network, {k: round(v, 1) for k, v in seconds.items()}, str(root), inputs,
                             checked, missing, ours, plan)
