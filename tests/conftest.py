import os
from pathlib import Path

import pytest

# Nothing may download at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`../shared/reference` beside the checkout; tests that need it skip when it is absent."""
    if not (REFERENCE_DIR / "README.md").exists():
        pytest.skip(f"reference fixture not found at {REFERENCE_DIR} (CI places ../shared beside the checkout)")
    return REFERENCE_DIR
