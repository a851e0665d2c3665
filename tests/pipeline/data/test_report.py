"""pipeline.report: counts that add up, shortcut warnings when a property gives the label away."""

import os

import numpy as np
import pytest
from PIL import Image

from pipeline.data import imaging, preprocess, report


def row(index: int, label: str, **values) -> dict:
    """A manifest row as read back from manifest.csv (every value a string)."""
    rng = np.random.default_rng(index)
    base = {
        "path": f"in/{label}/{index:03d}.jpg",
        "label": label,
        "status": imaging.ACCEPTED,
        "reason": "",
        "split": ("train", "train", "validation", "test")[index % 4],
        "sha256": f"{index:064x}",
        "width": str(int(rng.integers(100, 400))),
        "height": str(int(rng.integers(100, 400))),
        "format": "jpeg",
        "mode": "RGB",
        "orientation": "1",
        "grayscale": str(bool(index % 3 == 0)),
        "brightness": f"{rng.uniform(60, 200):.1f}",
        "face": "",
        "bytes": str(int(rng.integers(5_000, 90_000))),
        "duplicate_of": "",
    }
    base.update({key: str(value) for key, value in values.items()})
    assert set(base) == set(preprocess.MANIFEST_COLUMNS)
    return base


def balanced_rows(per_label: int = 20) -> list[dict]:
    return [row(index, ("happy", "sad")[index % 2]) for index in range(2 * per_label)]


def test_summarize_counts_every_row():
    rows = balanced_rows(5) + [
        row(100, "sad", status=imaging.REJECTED, reason=imaging.CORRUPT, split=""),
        row(101, "happy", status=imaging.REJECTED, reason=imaging.CORRUPT, split=""),
        row(102, "happy", status=imaging.REJECTED, reason=imaging.EMPTY, split=""),
        row(103, "happy", status=imaging.DUPLICATE, split="train"),
    ]
    summary = report.summarize(rows)
    assert summary["input_files"] == len(rows) == 14
    assert summary["status"] == {"accepted": 10, "duplicate": 1, "rejected": 3}
    assert summary["reason"] == {"corrupt": 2, "empty": 1}
    assert summary["label"] == {"happy": 8, "sad": 6}
    assert sum(summary["split"].values()) == 10  # accepted only
    assert sum(sum(counts.values()) for counts in summary["accepted"].values()) == 10
    assert summary["accepted"]["train"]["happy"] == sum(
        1 for r in rows[:10] if r["label"] == "happy" and r["split"] == "train"
    )


def test_no_shortcut_in_a_balanced_set():
    assert report.find_shortcuts(balanced_rows()) == []


def test_grayscale_shortcut_is_reported():
    rows = [
        row(index, label, grayscale=(label == "happy"))
        for index, label in enumerate(["happy", "sad"] * 15)
    ]
    (warning,) = report.find_shortcuts(rows)
    assert warning.startswith("grayscale predicts the label by itself")
    assert "100%" in warning and "30 accepted images" in warning


def test_brightness_threshold_shortcut_is_reported_with_its_direction():
    rng = np.random.default_rng(0)
    rows = [
        row(
            index,
            label,
            brightness=rng.uniform(150, 220) if label == "happy" else rng.uniform(40, 140),
        )
        for index, label in enumerate(["happy", "sad"] * 15)
    ]
    warnings = report.find_shortcuts(rows)
    assert len(warnings) == 1 and warnings[0].startswith("brightness")
    assert "mostly sad, over it mostly happy" in warnings[0]


def test_format_shortcut_and_mostly_is_enough():
    rows = balanced_rows()
    for index, current in enumerate(rows):
        wrong = index in (0, 1)  # one happy and one sad image break the rule: 95% still warns
        current["format"] = "png" if (current["label"] == "happy") != wrong else "jpeg"
    warnings = report.find_shortcuts(rows)
    assert [warning.split()[0] for warning in warnings] == ["format"]
    assert "95%" in warnings[0]


def test_rejected_images_and_small_sets_raise_no_warning():
    few = [
        row(index, label, grayscale=(label == "happy"))
        for index, label in enumerate(["happy", "sad"] * 5)
    ]
    assert report.find_shortcuts(few) == []
    rejected = [
        row(index, label, grayscale=(label == "happy"), status=imaging.REJECTED, reason="corrupt")
        for index, label in enumerate(["happy", "sad"] * 15)
    ]
    assert report.find_shortcuts(balanced_rows() + rejected) == []


def test_write_report(tmp_path):
    output = str(tmp_path)
    rows = balanced_rows(12)
    picture = np.zeros((40, 40, 3), dtype=np.uint8)
    picture[:, :20] = 255
    too_small = tmp_path / "tiny.png"
    Image.fromarray(picture).save(too_small)
    rows.append(
        row(99, "sad", path=too_small, status=imaging.REJECTED, reason=imaging.TOO_SMALL, split="")
    )
    rows.append(
        row(
            98,
            "sad",
            path=tmp_path / "gone.jpg",
            status=imaging.REJECTED,
            reason=imaging.UNREADABLE,
        )
    )
    first = rows[0]
    accepted_png = preprocess.image_path(
        output, first["split"], first["label"], first["path"], first["sha256"]
    )
    os.makedirs(os.path.dirname(accepted_png))
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(accepted_png)
    summary = report.summarize(rows)
    summary["warnings"] = ["grayscale predicts the label by itself (...)"]

    path = report.write_report(output, rows, summary)

    assert path == os.path.join(output, report.REPORT_FILE)
    text = open(path, encoding="utf-8").read()
    assert "**Shortcut:** grayscale predicts" in text
    assert f"| {imaging.TOO_SMALL} | 1 | {imaging.REASONS[imaging.TOO_SMALL]} |" in text
    for name in ("class_balance", "sizes", "rejects", "samples"):
        assert f"plots/{name}.png" in text
        with Image.open(os.path.join(output, report.PLOTS_DIR, f"{name}.png")) as plot:
            assert plot.size[0] > 200 and plot.size[1] > 100


@pytest.mark.parametrize("rows", [[], [row(0, "happy", status=imaging.REJECTED, reason="empty")]])
def test_write_report_on_degenerate_inputs(tmp_path, rows):
    summary = report.summarize(rows)
    summary["warnings"] = report.find_shortcuts(rows)
    report.write_report(str(tmp_path), rows, summary)
    assert os.path.exists(tmp_path / report.REPORT_FILE)
