"""What a data engineer would write instead of datalab: the same curation and checks in plain Polars, DuckDB SQL and pandas + GX."""
