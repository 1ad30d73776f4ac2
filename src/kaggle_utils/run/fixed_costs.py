"""What no FLOP count sees, measured by doing it: a papermill step's start, and the blend step.

A step's start is a fresh kernel importing what the notebooks import. The blend step's time is mostly such
fixed costs: its imports, fitting weights and thresholds on the OOF rows, the test prior's bootstrap
(``prior_boot`` EM fits), Grad-CAM on ``gradcam_per_grade`` images per grade (a forward and a backward pass
each, at the model's size) and the report (a dozen plots, the shake-up simulation). Each is run here as the
blend notebook runs it: ``blend_runs`` and ``write_report`` on random predictions with APTOS's grade mix, and
``gradcam_examples`` with an untrained model of the first run on the sample images.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# the blend notebook's parameter defaults (tests/test_measure.py keeps them equal to notebooks/blend.py's)
DEFAULTS = {"method": "qwk", "thresholds": "oof", "prior_method": "em", "prior_boot": 200, "gradcam_per_grade": 2,
            "shakeup_public": 1928, "shakeup_private": 11000, "shakeup_sims": 300}
APTOS_GRADES = (1805, 370, 999, 193, 295)  # APTOS 2019 training images per grade


def stand_in_predictions(names: list[str], n_oof: int, n_test: int, n_folds: int, seed: int = 0) -> tuple[dict, dict]:
    """Per run name: OOF (``id, grade, fold, pred``) and test (``id, pred``) frames, predictions = grade + noise."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    mix = np.asarray(APTOS_GRADES) / sum(APTOS_GRADES)
    grades, test_grades = rng.choice(5, size=n_oof, p=mix), rng.choice(5, size=n_test, p=mix)
    ids = [f"oof{i}" for i in range(n_oof)]
    test_ids = [f"test{i}" for i in range(n_test)]
    oof, test = {}, {}
    for name in names:
        oof[name] = pd.DataFrame({"id": ids, "grade": grades, "fold": np.arange(n_oof) % max(1, n_folds),
                                  "pred": grades + rng.normal(0, 0.6, n_oof)})
        test[name] = pd.DataFrame({"id": test_ids, "pred": test_grades + rng.normal(0, 0.6, n_test)})
    return oof, test


def measure_blend(work: dict[str, Any], pngs: list[str], out: Path) -> dict[str, float]:
    """Seconds of each part of the blend step: its notebook's start, fit, Grad-CAM, report."""
    import cv2

    from kaggle_utils import report
    from kaggle_utils.data.dataset import read_rgb
    from kaggle_utils.inference import ensemble
    from kaggle_utils.models import create_model

    p = {**DEFAULTS, **{k: v for k, v in work["params"].items() if k in DEFAULTS and v is not None}}
    parts = {"start": notebook_start_s(out / "start", BLEND_IMPORTS)}  # a kernel importing what the blend does
    runs = work["runs"]
    names = [r["name"] for r in runs]
    oof, test = stand_in_predictions(names, work["n_oof"], work["n_test"], max(r["folds"] for r in runs))
    t0 = time.perf_counter()
    result = ensemble.blend_runs(oof, test, next(iter(test.values()))["id"], method=p["method"],
                                 thresholds=p["thresholds"], prior_method=p["prior_method"], n_boot=p["prior_boot"])
    parts["fit"] = time.perf_counter() - t0
    examples = None
    if p["gradcam_per_grade"]:
        first = runs[0]
        size = int(first["size"])
        net = create_model(first["model"], head=first["head"], pool=first.get("pool", "avg"), pretrained=False)
        n = 5 * int(p["gradcam_per_grade"])
        images = [cv2.resize(read_rgb(pngs[i % len(pngs)]), (size, size), interpolation=cv2.INTER_AREA)
                  for i in range(n)]
        t0 = time.perf_counter()
        examples = report.gradcam_examples(net, images, [i % 5 for i in range(n)])
        parts["gradcam"] = time.perf_counter() - t0
    readable = result.test["blend"].notna().to_numpy()
    t0 = time.perf_counter()
    report.write_report(out, result.oof, weights=result.weights, thresholds=result.thresholds_oof, curves={},
                        gradcam=examples, test_pred=result.test.loc[readable, "blend"].to_numpy(),
                        prior=result.prior, threshold_mode=result.threshold_mode,
                        shakeup_sizes=(p["shakeup_public"], p["shakeup_private"]), shakeup_sims=p["shakeup_sims"])
    parts["report"] = time.perf_counter() - t0
    return parts


NOTEBOOK_IMPORTS = ("import pandas as pd\nfrom IPython.display import Image, display\nfrom kaggle_utils import io\n"
                    "from kaggle_utils.data.assemble import stage_table\n"
                    "from kaggle_utils.training import TrainConfig, load_table, train_fold\n"
                    "import kaggle_utils.inference.predict, matplotlib.pyplot\n")


BLEND_IMPORTS = ("from IPython.display import IFrame, display\nfrom kaggle_utils import io, report\n"
                 "from kaggle_utils.inference import ensemble, shift\n"  # notebooks/blend.py's, and Grad-CAM's:
                 "import kaggle_utils.data.dataset, kaggle_utils.inference.predict, kaggle_utils.training.checkpoint\n")


def notebook_start_s(tmp: Path, imports: str = NOTEBOOK_IMPORTS) -> float:
    """A papermill step's fixed cost, measured as one: a fresh kernel running the notebooks' imports (a plain
    Python doing the imports where papermill or a kernel is missing)."""
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        import nbformat
        import papermill as pm

        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(imports)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, str(tmp / "start.ipynb"))
        t0 = time.perf_counter()
        pm.execute_notebook(str(tmp / "start.ipynb"), str(tmp / "start_out.ipynb"), kernel_name="python3",
                            progress_bar=False, cwd=str(tmp),
                            extra_arguments=["--IPKernelApp.log_level=CRITICAL"])  # no kernel chatter
        return time.perf_counter() - t0
    except Exception:  # noqa: BLE001 - no kernel here: the imports alone are the best measure left
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
        t0 = time.perf_counter()
        plain = "\n".join(line for line in imports.splitlines() if "IPython" not in line)
        subprocess.run([sys.executable, "-c", plain], env=env, capture_output=True)
        return time.perf_counter() - t0
