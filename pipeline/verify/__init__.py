"""Answer extraction and checking."""
