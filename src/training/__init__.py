"""A fold trained: setup, epochs, validation, weight averaging, distillation, pseudo-labels."""
