"""Plumbing shared by the layers above: SQLite, batching, periodic loops, backend loading."""
