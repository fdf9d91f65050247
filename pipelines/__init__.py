"""Dagster pipelines of datalab (see DESIGN.md)."""
