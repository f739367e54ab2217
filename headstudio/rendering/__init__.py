"""Rendering parts shared by the methods."""
