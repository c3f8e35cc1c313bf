"""Every case of the shared parity fixtures, through the same runner as ``inverse-painting parity``."""
import pytest

from inverse_painting.core.parity import _Context, run_case

from fixture_paths import parity_dir

CASES = sorted(p.name for p in (parity_dir() / "cases").iterdir()) if parity_dir() else []


@pytest.fixture(scope="module")
def context(parity):
    return _Context(parity / "release")


@pytest.mark.parametrize("case", CASES)
def test_case(context, parity, case):
    result = run_case(context, parity / "cases" / case)
    print(result.line())
    assert result.ok, result.line()
    assert len(result.checks) >= 2
