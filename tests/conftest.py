import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

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
