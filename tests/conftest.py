"""Test session setup: offline, quiet tokenizers; the shared builders live in builders.py, the independent
reference computations in reference.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture
def output_dir(tmp_path):
    return str(tmp_path / "out")
