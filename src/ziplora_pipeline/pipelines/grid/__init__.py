"""``grid``: a concept library and every (subject, style) pair merged from it (not part of the one-pair job)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
