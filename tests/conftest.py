"""Shared test fixtures: the parity fixture set, a tiny random release, and the thread settings.

Tests run on CPU in fp32 with one thread (two are often slower on the CI machines) and never touch
the network. The parity fixtures live in ``shared/parity`` beside the checkout (or ``$PARITY_DIR``).
"""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from fixture_paths import parity_dir  # noqa: E402


@pytest.fixture(scope="session")
def parity() -> Path:
    d = parity_dir()
    if d is None:
        pytest.skip("parity fixtures not found (set PARITY_DIR)")
    return d


@pytest.fixture(scope="session")
def fixture_release(parity) -> Path:
    return parity / "release"


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory) -> Path:
    from inverse_painting.core.tiny_release import write_random_release

    return write_random_release(tmp_path_factory.mktemp("tiny") / "release", seed=0)


@pytest.fixture(scope="session")
def fixture_models(fixture_release):
    from inverse_painting.core.model_set import ModelSet

    return ModelSet.from_release(fixture_release)


@pytest.fixture(scope="session")
def fixture_metric(fixture_release):
    from inverse_painting.models.lpips_net import load_perceptual_metric

    return load_perceptual_metric("lpips_alex", weights_dir=fixture_release / "lpips")
