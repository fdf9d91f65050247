"""The store: publishing versions (plan, Iceberg write, manifest), pulling them, the catalog, storage and the version's card."""
