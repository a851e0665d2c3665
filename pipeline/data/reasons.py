"""The transform's vocabulary, without TensorFlow: the accepted formats and the reason codes.

THE transform (pipeline.data.transform) refuses a file with one of these codes; the data job's
manifest and report (pipeline.data.validate) show them, and a Beam driver that only builds the
job needs them without importing TensorFlow (its workers import it).
"""

ACCEPTED_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")

# Reason codes of a rejected file (the manifest's vocabulary), with the sentence of the message.
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
CORRUPT = "corrupt"
TOO_LARGE = "too_large"
TOO_SMALL = "too_small"
EXTREME_ASPECT = "extreme_aspect"
REASONS = {
    EMPTY: "the file has no bytes",
    NOT_AN_IMAGE: "the content is not an image",
    UNSUPPORTED_FORMAT: "an image format that is not decoded here (accepted: JPEG, PNG, GIF, "
    "BMP, WebP)",
    CORRUPT: "the image is truncated or damaged",
    TOO_LARGE: "over the pixel budget (checked from the header, before decoding)",
    TOO_SMALL: "the shorter side is under the minimum",
    EXTREME_ASPECT: "the long side is too many times the short side",
}
