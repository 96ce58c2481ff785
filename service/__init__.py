"""Everything that serves a request: features, catalog, routing."""
