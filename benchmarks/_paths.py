"""Imported first by each benchmark: the tests' fixtures (tests/fixtures, which the benchmarks share
with the tests) and this checkout's package (operator/) go first on sys.path, so that
`python3 benchmarks/NAME.py` runs from anywhere without PYTHONPATH."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "operator", REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
