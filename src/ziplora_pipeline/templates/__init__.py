"""Reusable pipeline templates (outside ``pipelines/`` so ``find_pipelines`` does not register them)."""
