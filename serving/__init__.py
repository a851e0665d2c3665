"""A TensorFlow Serving compatible model server (`happysad serve`) and client (`happysad predict`).

A standalone package: it serves any SavedModel and imports nothing from `pipeline`.
"""

__version__ = "0.2.0"
