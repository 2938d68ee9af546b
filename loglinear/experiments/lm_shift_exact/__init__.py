"""The paper's preference-shift claim, tested exactly in the emotion environment over real
text (docs/theory.md §10)."""

from .config import ExactShiftConfig
from .run import main

__all__ = ["ExactShiftConfig", "main"]
