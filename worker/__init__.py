"""The worker: batched classification of images and writing the results."""
