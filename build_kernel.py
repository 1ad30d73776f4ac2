#!/usr/bin/env python
"""Build the Kaggle bundles: the submission bundle (wheels + fold checkpoints, offline inference kernel) and
the training bundle (wheels + config + notebooks + ImageNet weights, offline GPU training kernel).

    python build_kernel.py outputs/demo/runs/lite0 --out outputs/kernel_bundle --owner YOU [--verify] [--plan]
    python build_kernel.py RUN_DIR --owner YOU --verify --data DIR   # DIR: the competition's test.csv + test_images/
    python build_kernel.py            # the runs of the most recent chain under outputs/ (it says which)
    python build_kernel.py --train configs/kaggle_quickstart.yaml --owner YOU [--verify]   # the training bundle
    python build_kernel.py DOWNLOADED --owner YOU   # a training kernel's output: the runs of its chain

All logic lives in kaggle_utils.kernel; `python build_kernel.py --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # this checkout, installed or not

from kaggle_utils.kernel.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
