"""Finite environments built from stored arrays: the emotion environment over real text
(docs/theory.md §10)."""

from .artifact import content_hash, load_artifact
from .emotion import emotion, emotion_reward

__all__ = ["content_hash", "emotion", "emotion_reward", "load_artifact"]
