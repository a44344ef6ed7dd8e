"""Use cases: one function per operation; each owns its transaction."""
