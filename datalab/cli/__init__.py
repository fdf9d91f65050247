"""The ``datalab`` command (a face of the lab): one module per group of commands, one error handler.

``main`` and ``app`` are re-exported so that the console script ``datalab.cli:main`` and
``python -m datalab.cli`` reach the same command."""

from datalab.cli.commands import app, main

__all__ = ["app", "main"]
