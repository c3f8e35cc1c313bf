"""Where the shared parity fixtures and reference manifests are (beside the checkout, or $PARITY_DIR)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def parity_dir() -> Path | None:
    for cand in (os.environ.get("PARITY_DIR"), SHARED / "parity", REPO / "shared" / "parity"):
        if cand and (Path(cand) / "cases").is_dir():
            return Path(cand)
    return None
