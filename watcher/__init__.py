"""The watcher: the inbox's door. Every file ends with exactly one recorded outcome.

It never imports TensorFlow: jobs go to the workers by task name.
"""
