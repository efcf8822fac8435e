"""Shared test set-up: the repository root on sys.path (for fixtures.builders) and common paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "fixtures"
DEMO_RUN = FIXTURES / "demo-run"


@pytest.fixture
def demo_run() -> Path:
    return DEMO_RUN
