"""The emotion environment from a real language model's text: the artifact builder."""
