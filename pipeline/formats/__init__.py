"""Package archive readers. Every format yields the same :class:`Entry` stream (see entry.py)."""
