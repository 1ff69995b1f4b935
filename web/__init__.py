"""The review page: browse results, correct the model where it was unsure."""
