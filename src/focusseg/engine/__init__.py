"""The training engine: a short loop, the events it calls, checkpoints."""
