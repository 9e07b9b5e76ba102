"""Metrics, voting and weights, stacking."""
