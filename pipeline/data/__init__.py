"""The data job: list and read images, validate, THE transform, dedupe, split; the dataset's report."""
