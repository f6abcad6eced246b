from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
LEMUR = ROOT / "examples"


@pytest.fixture(scope="session")
def shared_specs() -> Path:
    path = SHARED / "specs"
    if not path.is_dir():
        pytest.skip("../shared/specs is not beside the checkout")
    return path
