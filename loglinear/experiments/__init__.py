"""Runners: config -> tidy records on disk."""
