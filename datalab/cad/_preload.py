"""Imported by the sandbox's fork server: warm the parsers once, so each forked parse starts hot."""

from datalab.cad import worker

worker.warm()
