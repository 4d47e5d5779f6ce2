"""Helpers shared by the test modules of every lane: test modules import from here, never
from each other (tests/unit/test_test_layout.py checks it)."""
