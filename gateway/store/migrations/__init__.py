"""Alembic migrations of the gateway's schema, shipped with the package (run through gateway.store.schema)."""
