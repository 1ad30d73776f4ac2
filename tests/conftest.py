import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# `make test` runs one worker per core: one thread each (and in the kernels they start), or they oversubscribe
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real photographs beside the checkout (read-only); tests that need them skip loudly without them."""
    if not (SHARED_DATA / "idrid_train").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def raw_dir(shared_data: Path) -> Path:
    return shared_data / "raw"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(autouse=True, scope="module")
def _restore_model_registry():
    """Models a test module registers (the tiny test CNN) leave with it: registry tests see only the zoo."""
    from kaggle_utils.models import registry

    before = set(registry.list_models())  # also loads the built-in zoo, which registers lazily
    yield
    for name in set(registry._REGISTRY) - before:
        del registry._REGISTRY[name]


@pytest.fixture(scope="session")
def quick_train_bundle(tmp_path_factory) -> tuple[Path, dict]:
    """The training bundle of configs/kaggle_quickstart.yaml, built once for every test that reads it (its
    contents, tests/test_kernel_train.py; Kaggle's client, tests/test_kaggle_client.py): never modify it."""
    from kaggle_utils.kernel.train_bundle import TrainBundleSpec, build_training

    out = tmp_path_factory.mktemp("train_bundle") / "bundle"
    spec = TrainBundleSpec(REPO / "configs" / "kaggle_quickstart.yaml", out, owner="tester")
    return out, build_training(spec, progress=False)
