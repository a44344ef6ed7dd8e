"""Persistence: SQLAlchemy 2.0 tables, repositories and the unit of work."""
