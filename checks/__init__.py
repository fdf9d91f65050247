"""Dagster checks of datalab (see DESIGN.md)."""
