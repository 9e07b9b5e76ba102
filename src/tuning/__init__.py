"""Optuna search spaces and studies."""
