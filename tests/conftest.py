"""Shared fixtures: one synthetic dataset and one trained `tiny` model per test session.

The session fixtures are bounded by step counts, never by the clock: on a loaded machine they take longer but
train the same model. Their set-up does not count against the per-test timeout (``timeout_func_only`` in
pyproject.toml): the first test that asks for ``trained_run`` would otherwise be charged the whole training and
time out, failing every test that shares the fixture.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests: few examples, no per-example deadline (the machine may be loaded), the same examples on every
# run (derandomize) and no example database on disk. `pytest --hypothesis-profile thorough` searches harder.
settings.register_profile(
    "metalseg",
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=1000, deadline=None, database=None)
settings.load_profile("metalseg")

# Tests share 2 cores with each other's subprocesses; oversubscribed torch threads make everything slower.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Every viewer autosaves its annotations (napari_metalseg.data.autosave): each test gets its own empty autosave folder,
# so no test writes into the user's data folder or finds annotations another test painted. The same for the embedding
# cache on disk (napari_metalseg.io.embedding_store): no test fills or clears the user's cache. A hook, not an autouse
# fixture: hypothesis refuses function-scoped fixtures.
_AUTOSAVE_BASE = Path(tempfile.mkdtemp(prefix="metalseg-autosave-"))


def pytest_runtest_setup(item):
    os.environ["METALSEG_AUTOSAVE_DIR"] = tempfile.mkdtemp(dir=_AUTOSAVE_BASE)
    os.environ["METALSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="cache-", dir=_AUTOSAVE_BASE)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_AUTOSAVE_BASE, ignore_errors=True)


TRAIN_STEPS = 300
IMG_SIZE = 128


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """10 synthetic 256 px micrographs at 2700/3000/5000x with train/val/test splits."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.synth import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path_factory.mktemp("data") / "steel", n=10, size=256, seed=1)
    return load_dataset(root, require_masks=True)


@pytest.fixture(scope="session")
def split_samples(synth_dataset):
    from napari_metalseg.data.samples import load_samples

    return {split: load_samples(synth_dataset.split(split)) for split in ("train", "val", "test")}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synth_dataset, split_samples):
    """A ratio-guided tiny model trained for exactly ``TRAIN_STEPS`` steps on the CPU (no time budget, fp32 whatever
    the CPU offers); returns (run dir, list of progress events)."""
    from napari_metalseg.training import TrainConfig, train

    run = tmp_path_factory.mktemp("runs") / "tiny_ratio"
    config = TrainConfig(
        model="tiny",
        img_size=IMG_SIZE,
        guidance="ratio",
        steps=TRAIN_STEPS,
        batch_size=4,
        lr=2e-3,
        val_every=TRAIN_STEPS // 2,
        device="cpu",
        bf16=False,
        seed=0,
    )
    assert config.budget_s is None  # step-bounded: a time budget would make the model depend on the machine's load
    events = list(train(split_samples["train"], synth_dataset.phases, run, config, val_samples=split_samples["val"]))
    return run, events
