"""One source of truth for a fold's training defaults (issue 17): the train notebook's parameters cell (the
``.ipynb`` papermill runs and its ``.py`` pair), :class:`TrainConfig`'s dataclass fields and
``configs/fold_example.yaml`` must agree on every setting they share, so that a fold trained by the notebook,
by ``python -m kaggle_utils.training --config configs/fold_example.yaml`` or by ``train_fold(TrainConfig(...))``
is the same run. They once said 2 / 10 / 8 epochs and val_qwk / val_loss / val_loss.

Only where the data is and where the run goes may differ (placeholders: the notebook's ``outputs/cache``, the
YAML's README paths, TrainConfig's none). The README walk (tests/test_readme.py) also trains folds with the
notebook and then resumes them with the fold YAML, which fails on any result-changing difference.
"""

import ast
import dataclasses
from pathlib import Path
from typing import Any

import jupytext
import pytest
import yaml

from kaggle_utils.training.config import PATH_FIELDS, TrainConfig

REPO = Path(__file__).resolve().parents[1]
FOLD_YAML = REPO / "configs" / "fold_example.yaml"
LOCATIONS = {"out_dir", *PATH_FIELDS}  # where the data is / the run goes: placeholders, different on purpose
NOTEBOOK_ONLY = {"stage", "train_sources", "extra_csv", "overrides"}  # the notebook's own, not TrainConfig's
SHARED_BY_ALL = {"epochs", "monitor", "seed", "model", "head", "pool", "pretrained", "size", "batch_size", "lr",
                 "augmentation", "num_workers", "fold"}  # at least these appear in all three


def notebook_parameters(suffix: str) -> dict[str, Any]:
    """The train notebook's parameters cell as {name: value}, read with ast (plain literal assignments)."""
    nb = jupytext.read(REPO / "notebooks" / f"train{suffix}")
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"notebooks/train{suffix}: expected one cell tagged 'parameters', found {len(cells)}"
    values = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"notebooks/train{suffix}: the parameters cell holds only `name = literal` lines, not {ast.unparse(node)}"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def trainconfig_defaults() -> dict[str, Any]:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(TrainConfig)}


def fold_yaml() -> dict[str, Any]:
    return yaml.safe_load(FOLD_YAML.read_text(encoding="utf-8"))


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: 1 == 1.0 (YAML ``warmup_epochs: 1``), but True is not 1."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


@pytest.fixture(scope="module")
def sources() -> dict[str, dict[str, Any]]:
    return {"notebooks/train.ipynb": notebook_parameters(".ipynb"), "TrainConfig": trainconfig_defaults(),
            "configs/fold_example.yaml": fold_yaml()}


def test_every_shared_training_default_agrees(sources):
    keys = sorted(set().union(*sources.values()) - LOCATIONS - NOTEBOOK_ONLY)
    disagree = []
    for key in keys:
        seen = {name: values[key] for name, values in sources.items() if key in values}
        first = next(iter(seen.values()))
        if len(seen) > 1 and not all(_same(first, v) for v in seen.values()):
            disagree.append(f"{key}: " + ", ".join(f"{name} {v!r}" for name, v in seen.items()))
    assert not disagree, "training defaults disagree (one source of truth: TrainConfig):\n  " + "\n  ".join(disagree)


def test_the_comparison_is_not_vacuous(sources):
    """Each source is read, and the keys issue 17 was about are in all three."""
    nb, tc, fy = sources.values()
    missing = {name: sorted(SHARED_BY_ALL - set(values)) for name, values in sources.items()}
    assert not any(missing.values()), f"expected in every source: {missing}"
    assert (nb["epochs"], nb["monitor"], nb["seed"]) == (tc["epochs"], tc["monitor"], tc["seed"]) \
        == (fy["epochs"], fy["monitor"], fy["seed"])


def test_notebook_and_yaml_name_only_trainconfig_fields(sources):
    """A misspelt name (``epoch = 8``) would be a parameter nothing reads; the YAML would fail to load."""
    fields = set(trainconfig_defaults())
    nb, _, fy = sources.values()
    assert not set(nb) - fields - NOTEBOOK_ONLY, f"train notebook parameters that are no TrainConfig field: " \
                                                 f"{sorted(set(nb) - fields - NOTEBOOK_ONLY)}"
    assert not set(fy) - fields, f"{FOLD_YAML.name} keys that are no TrainConfig field: {sorted(set(fy) - fields)}"
    assert TrainConfig.from_file(FOLD_YAML).validate()  # and it loads as one


def test_notebook_pair_has_the_same_parameters():
    """papermill runs the .ipynb, people edit the .py (jupytext pair): both cells must say the same."""
    assert notebook_parameters(".ipynb") == notebook_parameters(".py")
