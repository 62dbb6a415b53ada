"""Fixtures shared by the test modules: a preprocessing cache and a phantom dataset, each built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from activeseg.data.phantom import make_phantom_dataset
from activeseg.engine.malloc import keep_freed_memory


def pytest_configure(config: pytest.Config) -> None:
    """Tests train and score as the CLI does: with freed memory kept (``activeseg.engine.malloc``)."""
    keep_freed_memory()


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One preprocessing cache for the session: entries are content-addressed, so every run config may share it."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve 32³ synthetic cases in the MSD layout. Tests copy it before changing anything in it."""
    return make_phantom_dataset(tmp_path_factory.mktemp("phantoms"), 12, seed=3)
