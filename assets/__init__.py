"""Dagster assets of datalab (see DESIGN.md)."""
