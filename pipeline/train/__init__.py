"""Training: tf.data input, models and backbones, the fit loop, tuning and cross-validation."""
