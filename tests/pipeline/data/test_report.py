"""pipeline.data.report: mergeable counts that add up, warnings for shortcuts and imbalance."""

import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline, util
from PIL import Image

from pipeline import config
from pipeline.data import job, report, schema, validate

ACCEPTED, REJECTED, DUPLICATE = validate.ACCEPTED, validate.REJECTED, validate.DUPLICATE


def row(index: int, label: str, status: str = ACCEPTED, reason: str = "", **info) -> dict:
    """A manifest row as the data job makes it (job.manifest_row), with plausible values."""
    rng = np.random.default_rng(index)
    values = {
        "width": int(rng.integers(100, 400)),
        "height": int(rng.integers(100, 400)),
        "format": "jpeg",
        "grayscale": index % 3 == 0,
        "brightness": round(float(rng.uniform(60, 200)), 1),
        **info,
    }
    split = "" if status == REJECTED else ("train", "train", "validation", "test")[index % 4]
    return job.manifest_row(
        schema.SourceImage(f"in/{label}/{index:03d}.jpg", label),
        validate.ImageInfo(status, reason, **values),
        sha256=f"{index:064x}",
        split=split,
        size=int(rng.integers(5_000, 90_000)),
    )


def statistics(rows: list[dict]) -> dict:
    """Statistics of the rows as a runner combines them: two partial sums, merged."""
    combine = report.Statistics()
    partial = []
    for part in (rows[::2], rows[1::2]):
        accumulator = combine.create_accumulator()
        for one in part:
            accumulator = combine.add_input(accumulator, one)
        partial.append(accumulator)
    return combine.extract_output(combine.merge_accumulators(partial))


def balanced_rows(per_label: int = 20) -> list[dict]:
    return [row(index, ("happy", "sad")[index % 2]) for index in range(2 * per_label)]


def test_summary_counts_every_row():
    rows = balanced_rows(5) + [
        row(100, "sad", REJECTED, "corrupt"),
        row(101, "happy", REJECTED, "corrupt"),
        row(102, "happy", REJECTED, "empty"),
        row(103, "happy", DUPLICATE),
    ]
    summary = report.summarize(statistics(rows))
    assert summary["input_files"] == len(rows) == 14
    assert summary["status"] == {"accepted": 10, "duplicate": 1, "rejected": 3}
    assert summary["reason"] == {"corrupt": 2, "empty": 1}
    assert summary["label"] == {"happy": 8, "sad": 6}
    assert sum(summary["split"].values()) == 10  # accepted only
    assert summary["accepted"]["train"]["happy"] == sum(
        1 for r in rows[:10] if r["label"] == "happy" and r["split"] == "train"
    )


def test_statistics_combine_on_a_runner_as_in_one_pass():
    rows = balanced_rows(6) + [row(50, "sad", REJECTED, "too_small", width=20, height=20)]
    expected = report.summarize(statistics(rows))
    with test_pipeline.TestPipeline() as pipeline:
        combined = (
            pipeline
            | beam.Create(rows)
            | beam.CombineGlobally(report.Statistics())
            | beam.Map(report.summarize)
        )
        util.assert_that(combined, util.equal_to([expected]))


def test_no_warning_for_a_balanced_set():
    counts = statistics(balanced_rows())
    assert report.find_shortcuts(counts) == [] and report.find_imbalance(counts) == []


def test_grayscale_shortcut_is_reported():
    rows = [
        row(index, label, grayscale=(label == "happy"))
        for index, label in enumerate(["happy", "sad"] * 15)
    ]
    (warning,) = report.find_shortcuts(statistics(rows))
    assert warning.startswith("grayscale predicts the label by itself")
    assert "100%" in warning and "30 accepted images" in warning


def test_brightness_threshold_shortcut_is_reported_with_its_direction():
    rng = np.random.default_rng(0)
    rows = [
        row(
            index,
            label,
            brightness=float(rng.uniform(150, 220) if label == "happy" else rng.uniform(40, 140)),
        )
        for index, label in enumerate(["happy", "sad"] * 15)
    ]
    warnings = report.find_shortcuts(statistics(rows))
    assert len(warnings) == 1 and warnings[0].startswith("brightness")
    assert "mostly sad, from it on mostly happy" in warnings[0]


def test_format_shortcut_and_mostly_is_enough():
    rows = []
    for index, current in enumerate(balanced_rows()):
        wrong = index in (0, 1)  # one happy and one sad image break the rule: 95% still warns
        image_format = "png" if (current["label"] == "happy") != wrong else "jpeg"
        rows.append(row(index, current["label"], format=image_format))
    warnings = report.find_shortcuts(statistics(rows))
    assert [warning.split()[0] for warning in warnings] == ["format"]
    assert "95%" in warnings[0]


def test_rejected_images_and_small_sets_raise_no_shortcut_warning():
    few = [
        row(index, label, grayscale=(label == "happy"))
        for index, label in enumerate(["happy", "sad"] * 5)
    ]
    assert report.find_shortcuts(statistics(few)) == []
    rejected = [
        row(index, label, REJECTED, "corrupt", grayscale=(label == "happy"))
        for index, label in enumerate(["happy", "sad"] * 15, start=100)
    ]
    assert report.find_shortcuts(statistics(balanced_rows() + rejected)) == []


def test_a_three_to_one_imbalance_is_reported():
    rows = [row(index, "happy") for index in range(30)]
    rows += [row(index, "sad") for index in range(30, 40)]
    rows += [row(index, "sad", REJECTED, "corrupt") for index in range(40, 70)]  # not counted
    (warning,) = report.find_imbalance(statistics(rows))
    assert warning.startswith("class imbalance: 30 happy vs 10 sad images (3.0:1)")
    assert "75%" in warning  # always answering happy
    assert report.find_imbalance(statistics([row(index, "happy") for index in range(5)])) == []


def _samples() -> list[dict]:
    picture = np.zeros((256, 256, 3), np.uint8)
    picture[:, :128] = 255
    return [
        {"label": "happy", "reason": "", "image": report.thumbnail(picture)},
        {"label": "sad", "reason": "", "image": report.thumbnail(255 - picture)},
        {"label": "sad", "reason": "too_small", "path": "in/sad/tiny.png", "image": None},
    ]


def test_write_report(tmp_path):
    output = str(tmp_path / "out")
    rows = [row(index, "happy", grayscale=True) for index in range(0, 30, 2)]
    rows += [row(index, "sad", grayscale=False) for index in range(1, 30, 2)]
    rows.append(row(99, "sad", REJECTED, "too_small", width=20, height=20))
    data = config.DataConfig()
    summary = report.write_report(statistics(rows), output, data, _samples())

    with open(os.path.join(output, "summary.json"), encoding="utf-8") as handle:
        assert json.load(handle) == summary
    assert summary["transform"] == config.to_dict(data.transform)
    (warning,) = [text for text in summary["warnings"] if not text.startswith("small ")]
    with open(os.path.join(output, "report.md"), encoding="utf-8") as handle:
        text = handle.read()
    assert warning in text and "grayscale predicts" in warning
    assert f"| too_small | 1 | {validate.REASONS['too_small']} |" in text
    for name in ("class_balance", "sizes", "rejects", "samples"):
        assert f"plots/{name}.png" in text
        with Image.open(os.path.join(output, "plots", f"{name}.png")) as plot:
            assert plot.size[0] > 200 and plot.size[1] > 100


@pytest.mark.parametrize("rows", [[], [row(0, "happy", REJECTED, "empty")]])
def test_write_report_on_degenerate_inputs(tmp_path, rows):
    summary = report.write_report(statistics(rows), str(tmp_path), config.DataConfig(), [])
    assert summary["input_files"] == len(rows) and summary["warnings"] == []
    assert sorted(os.listdir(tmp_path)) == ["plots", "report.md", "summary.json"]


def test_a_split_with_few_or_no_images_is_reported():
    # row() puts a quarter of the accepted images in validation, a quarter in test.
    rows = [row(index, ("happy", "sad")[index % 2]) for index in range(40)]
    data = config.DataConfig()
    warnings = report.find_small_splits(statistics(rows), data)
    assert [warning.split(":")[0] for warning in warnings] == [
        "small validation split",
        "small test split",
    ]
    assert warnings[0].startswith("small validation split: 10 of 40 accepted images (fraction 0.1")
    assert "handful of images" in warnings[0]
    no_test = [one for one in rows if one["split"] != "test"]
    (_, empty) = report.find_small_splits(statistics(no_test), data)
    assert empty.startswith("small test split: 0 of 30") and "every split needs images" in empty
    unused_test = config.DataConfig(split_fractions=(0.8, 0.2, 0.0))
    assert len(report.find_small_splits(statistics(no_test), unused_test)) == 1
    many = [row(index, ("happy", "sad")[index % 2]) for index in range(100)]
    assert report.find_small_splits(statistics(many), data) == []
