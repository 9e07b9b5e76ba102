"""The ground floor: configuration, errors and atomic writes, progress, tracking, the device runtime, torchrun."""
