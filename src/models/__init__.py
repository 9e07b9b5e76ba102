"""The timm model and its weights and freezing, losses, optimizers and schedules."""
