"""Small utilities: atomic writes."""
