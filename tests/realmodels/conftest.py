"""The corpus fixture: one folder per test session, each model built there once, on demand."""
from __future__ import annotations

import pytest

from .corpus import Corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("realmodels"))
