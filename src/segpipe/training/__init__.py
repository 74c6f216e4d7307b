"""Training: the parts built from params (setup), the epoch loop, losses, the
optimizer and schedule, batch augmentation, and resuming after an interruption.
The train stage runs this whole folder."""
