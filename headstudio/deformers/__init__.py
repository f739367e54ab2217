"""Deformation fields: observed (posed, expressive) space to canonical space."""
