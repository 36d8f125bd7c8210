"""Kedro glue: typed parameters, preflight checks, hooks, MLflow tracking. Not part of the method (core/)."""
