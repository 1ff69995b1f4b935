"""moodwatch: classify photos of people as happy or sad, and keep the model improving.

This package holds what the services share: settings, image decoding, the model registry
and the CLI. It imports no service package except from the CLI.
"""

__version__ = "0.1.0"
