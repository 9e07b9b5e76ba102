"""Reports, comparisons, OOF review, Grad-CAM, the frozen-feature probe, the stage benchmark."""
