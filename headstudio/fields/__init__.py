"""Canonical-space fields shared by the methods."""
