"""Subcommands of the ``loglinear`` CLI, one module each (discovered by ``loglinear.cli``)."""
