"""jessy: a local-first toolkit that fine-tunes a small Gemma into a warm persona companion."""

__version__ = "0.1.0"
