"""The run-folder layout, checkpoints, and ensemble members with their cached predictions."""
