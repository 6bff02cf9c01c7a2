"""Training: the loop, distributed setup, checkpoints and launching."""
