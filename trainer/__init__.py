"""Training: clean the curated folders, learn a model, evaluate it, register and promote it."""
