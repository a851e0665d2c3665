"""TensorFlow Serving REST-compatible server (`happysad serve`) and client (`happysad predict`)."""
