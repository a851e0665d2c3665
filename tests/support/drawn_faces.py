"""A flat cartoon face drawn with OpenCV, which face detectors (Haar cascade, MTCNN) find."""

import cv2
import numpy as np


def drawn_face(face_size: int = 200, canvas=(300, 400)) -> np.ndarray:
    """A flat cartoon face right of centre, which OpenCV's frontal cascade finds."""
    image = np.full((*canvas, 3), 90, dtype=np.uint8)
    centre_x, centre_y, s = canvas[1] // 2 + 40, canvas[0] // 2, face_size
    cv2.ellipse(
        image, (centre_x, centre_y), (int(s * 0.4), int(s * 0.52)), 0, 0, 360, (205, 170, 140), -1
    )
    for side in (-1, 1):
        eye_x, eye_y = centre_x + side * int(s * 0.17), centre_y - int(s * 0.1)
        cv2.ellipse(
            image, (eye_x, eye_y), (int(s * 0.08), int(s * 0.04)), 0, 0, 360, (255, 255, 255), -1
        )
        cv2.circle(image, (eye_x, eye_y), int(s * 0.035), (40, 30, 20), -1)
        brow = (
            (eye_x - int(s * 0.09), eye_y - int(s * 0.09)),
            (eye_x + int(s * 0.09), eye_y - int(s * 0.1)),
        )
        cv2.line(image, *brow, (60, 40, 30), max(2, s // 40))
    nose = (
        (centre_x, centre_y - int(s * 0.05)),
        (centre_x - int(s * 0.03), centre_y + int(s * 0.1)),
    )
    cv2.line(image, *nose, (150, 110, 90), max(2, s // 60))
    mouth_centre = (centre_x, centre_y + int(s * 0.25))
    cv2.ellipse(
        image,
        mouth_centre,
        (int(s * 0.15), int(s * 0.05)),
        0,
        0,
        180,
        (120, 50, 50),
        max(2, s // 40),
    )
    return image
