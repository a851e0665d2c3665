"""happysad pipeline: preprocess, build, train, evaluate, export, push, and the `happysad` CLI."""

__version__ = "0.1.0"
