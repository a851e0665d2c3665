"""The data job's report: counts, warnings and plots a person can skim in a minute.

Everything here is computed from mergeable statistics (`Statistics`, a Beam CombineFn over
the manifest rows) and fixed-size samples, never from every row at once, so the report of a
million files costs what the report of a thousand does. Written by `WriteReport`:

    OUT/report.md      totals, warnings, tables, the plots below
    OUT/plots/*.png    class balance, rejects by reason, original sizes, samples
    OUT/summary.json   the counts and warnings as JSON; written last: it marks completion
"""

import collections
import io
import json
import logging
import math
import os
from typing import TYPE_CHECKING

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from pipeline import artifacts, contract
from pipeline import config as config_lib
from pipeline.data import splits, validate

if TYPE_CHECKING:  # matplotlib is imported where the report is drawn, not by every worker
    from matplotlib import figure as figure_lib

PLOTS_DIR = "plots"
# A property "predicts the label by itself" when one threshold or one value table on it alone
# reaches this balanced accuracy over the accepted images, with enough images of each label.
SHORTCUT_ACCURACY = 0.9
SHORTCUT_MIN_PER_LABEL = 10
# The larger class more than this many times the smaller one: the report warns.
IMBALANCE_RATIO = 1.5
CATEGORICAL_PROPERTIES = ("format", "mode", "grayscale", "orientation", "extension")
NUMERIC_PROPERTIES = ("width", "height", "pixels", "aspect_ratio", "bytes", "brightness")
_MAX_CATEGORIES = 12
_BINS_PER_OCTAVE = 8  # sizes are counted in bins of 2**(1/8): a 9% step
SAMPLES_PER_ROW = 8
_THUMBNAIL_SIDE = 96
_LABEL_COLOURS = {"happy": "#e6a100", "sad": "#3a6ea5"}
_DPI = 100

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Statistics: one mergeable accumulator for the whole manifest.


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def row_properties(row: dict) -> dict:
    """A manifest row's report properties (None where unknown)."""
    width, height = _number(row["width"]), _number(row["height"])
    return {
        "format": row["format"] or None,
        "mode": row.get("mode") or None,
        "grayscale": None if row["grayscale"] == "" else str(row["grayscale"]),
        "orientation": None if row["orientation"] == "" else str(row["orientation"]),
        "extension": os.path.splitext(row["path"])[1].lower() or "(none)",
        "width": width,
        "height": height,
        "pixels": width * height if width and height else None,
        "aspect_ratio": width / height if width and height else None,
        "bytes": _number(row["bytes"]),
        "brightness": _number(row["brightness"]),
    }


def _bin(name: str, value: float) -> float:
    """The bin a numeric property's value is counted in (its lower edge)."""
    if name == "brightness":
        return float(math.floor(value))
    if name == "aspect_ratio":
        return math.floor(value * 100) / 100
    if value <= 0:
        return 0.0
    return 2 ** (math.floor(math.log2(value) * _BINS_PER_OCTAVE) / _BINS_PER_OCTAVE)


def _empty() -> dict:
    return {
        "input_files": 0,
        "status": collections.Counter(),
        "reason": collections.Counter(),
        "label": collections.Counter(),
        "accepted": collections.Counter(),  # (split, label)
        "categorical": collections.Counter(),  # (property, value, label), accepted only
        "numeric": collections.Counter(),  # (property, bin, label), accepted only
        "sizes": collections.Counter(),  # (width bin, height bin, label, accepted)
        "faces": collections.Counter(),  # (label, face found) of the sampled accepted images
    }


def _add(accumulator: dict, row: dict) -> dict:
    accumulator["input_files"] += 1
    accumulator["status"][row["status"]] += 1
    accumulator["label"][row["label"]] += 1
    if row["reason"]:
        accumulator["reason"][row["reason"]] += 1
    properties = row_properties(row)
    accepted = row["status"] == validate.ACCEPTED
    if properties["width"] and properties["height"]:
        key = (_bin("width", properties["width"]), _bin("height", properties["height"]))
        accumulator["sizes"][(*key, row["label"], accepted)] += 1
    if not accepted:
        return accumulator
    accumulator["accepted"][(row["split"], row["label"])] += 1
    if row.get("face", "") != "":
        accumulator["faces"][(row["label"], str(row["face"]) == "True")] += 1
    for name in CATEGORICAL_PROPERTIES:
        if properties[name] is not None:
            accumulator["categorical"][(name, properties[name], row["label"])] += 1
    for name in NUMERIC_PROPERTIES:
        if properties[name] is not None:
            accumulator["numeric"][(name, _bin(name, properties[name]), row["label"])] += 1
    return accumulator


class Statistics(beam.CombineFn):
    """Manifest rows -> the report's counts, tables and histograms (mergeable, bounded size)."""

    def create_accumulator(self):
        return _empty()

    def add_input(self, accumulator, row):
        return _add(accumulator, row)

    def merge_accumulators(self, accumulators):
        merged = _empty()
        for accumulator in accumulators:  # counters add up key by key
            merged["input_files"] += accumulator["input_files"]
            for name, counts in accumulator.items():
                if name != "input_files":
                    merged[name].update(counts)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def summarize(statistics: dict) -> dict:
    """The JSON summary: counts by status, reason, label and split, and per split and label."""
    accepted = {
        split: {label: statistics["accepted"][(split, label)] for label in contract.LABELS}
        for split in splits.SPLITS
    }
    return {
        "input_files": statistics["input_files"],
        "status": dict(sorted(statistics["status"].items())),
        "reason": dict(sorted(statistics["reason"].items())),
        "label": dict(sorted(statistics["label"].items())),
        "split": {split: sum(counts.values()) for split, counts in accepted.items()},
        "accepted": accepted,
        "faces": {
            "sampled": sum(statistics["faces"].values()),
            "found": sum(count for (_, found), count in statistics["faces"].items() if found),
        },
    }


# ---------------------------------------------------------------------------------------------
# Warnings.


def find_shortcuts(statistics: dict) -> list[str]:
    """One warning sentence per image property that predicts the label by itself.

    For example all happy images grayscale and all sad ones colour: a classifier would learn
    the colour, not the expression. Each property is scored by the balanced accuracy of the
    best rule that looks at it alone (a value table for categorical properties, one threshold
    between bins for numeric ones), over the accepted images.
    """
    per_label = collections.Counter()
    for (_, label), count in statistics["accepted"].items():
        per_label[label] += count
    if len(per_label) < 2 or min(per_label.values()) < SHORTCUT_MIN_PER_LABEL:
        return []
    warnings = []
    for name in CATEGORICAL_PROPERTIES + NUMERIC_PROPERTIES:
        source = "categorical" if name in CATEGORICAL_PROPERTIES else "numeric"
        table = collections.defaultdict(collections.Counter)
        for (prop, value, label), count in statistics[source].items():
            if prop == name:
                table[value][label] += count
        labels = {label for counts in table.values() for label in counts}
        if len(labels) < 2:
            continue
        rule = _categorical_rule if source == "categorical" else _threshold_rule
        finding = rule(table)
        if finding and finding[0] >= SHORTCUT_ACCURACY:
            accuracy, described = finding
            images = sum(sum(counts.values()) for counts in table.values())
            warnings.append(
                f"{name} predicts the label by itself ({described}; balanced accuracy "
                f"{accuracy:.0%} over {images} accepted images): a classifier could learn "
                f"this shortcut instead of the expression."
            )
    return warnings


def _categorical_rule(table: dict) -> tuple[float, str] | None:
    """Balanced accuracy of predicting, for each value, the label it is most typical of."""
    if len(table) > _MAX_CATEGORIES or len(table) < 2:
        return None
    totals = collections.Counter()
    for counts in table.values():
        totals.update(counts)
    recall = collections.Counter()
    for counts in table.values():
        best = max(totals, key=lambda label: counts[label] / totals[label])
        recall[best] += counts[best] / totals[best]
    accuracy = sum(recall.values()) / len(totals)
    described = "; ".join(
        f"{value}: " + ", ".join(f"{counts[label]} {label}" for label in sorted(totals))
        for value, counts in sorted(table.items())
    )
    return accuracy, described


def _threshold_rule(table: dict) -> tuple[float, str] | None:
    """Balanced accuracy of the best single threshold between the bins of a numeric property."""
    labels = sorted({label for counts in table.values() for label in counts})
    bins = sorted(table)
    if len(labels) != 2 or len(bins) < 2:
        return None
    first = np.cumsum([table[edge][labels[0]] for edge in bins])
    second = np.cumsum([table[edge][labels[1]] for edge in bins])
    # Rule A: the first label at or below a cut. Rule B: the reverse.
    rule_a = (first[:-1] / first[-1] + 1 - second[:-1] / second[-1]) / 2
    rule_b = 1 - rule_a
    best_a, best_b = int(np.argmax(rule_a)), int(np.argmax(rule_b))
    if rule_a[best_a] >= rule_b[best_b]:
        accuracy, cut, below, above = rule_a[best_a], best_a, labels[0], labels[1]
    else:
        accuracy, cut, below, above = rule_b[best_b], best_b, labels[1], labels[0]
    threshold = bins[cut + 1]
    return float(accuracy), f"under {threshold:g} mostly {below}, from it on mostly {above}"


FACE_SHARE = 0.5  # under this share of sampled images with a face, the report warns
FACE_SAMPLE_MINIMUM = 10


def find_few_faces(statistics: dict, data: config_lib.DataConfig) -> list[str]:
    """A warning when MTCNN finds a face in under half of the sampled accepted images."""
    sampled = sum(statistics["faces"].values())
    found = sum(count for (_, has_face), count in statistics["faces"].items() if has_face)
    if sampled < FACE_SAMPLE_MINIMUM or found / sampled >= FACE_SHARE:
        return []
    remedy = (
        "the transform already crops every image to its largest face (--face-crop), and an "
        "image without one stays whole"
        if data.transform.face_crop
        else "rebuild with --face-crop, so that every image is cut to its largest face, in the "
        "data job and in the served model alike"
    )
    return [
        f"few faces: MTCNN finds a face in {found} of {sampled} sampled accepted images "
        f"({found / sampled:.0%}). The recommended recipe reads facial expressions: {remedy}; "
        "`happysad run` also trains the seed's CNN when the recommended recipe scores under "
        "0.95 validation AUC, and keeps the better of the two."
    ]


SPLIT_MINIMUM = 20  # accepted images under which a split's metrics are mostly noise


def find_small_splits(statistics: dict, data: config_lib.DataConfig) -> list[str]:
    """One warning per evaluation split (validation, test) under SPLIT_MINIMUM accepted images.

    The validation split chooses the recipe, stops training and sets the threshold; the test
    split gives the reported accuracy: a handful of images decides either by chance. A split
    with none makes `happysad build` and `happysad run` stop with a message.
    """
    per_split = collections.Counter()
    for (split, _), count in statistics["accepted"].items():
        per_split[split] += count
    total = sum(per_split.values())
    if total == 0:  # nothing accepted: the build's own message says so
        return []
    warnings = []
    for split, fraction in zip(splits.SPLITS, data.split_fractions, strict=True):
        count = per_split[split]
        if split == "train" or fraction <= 0 or count >= SPLIT_MINIMUM:
            continue
        consequence = (
            "`happysad build` and `happysad run` stop, since every split needs images"
            if count == 0
            else "its metrics (the recipe choice, early stopping and the threshold on "
            "validation; the reported accuracy on test) are decided by a handful of images"
        )
        warnings.append(
            f"small {split} split: {count} of {total} accepted images (fraction {fraction:g}, "
            f"assigned by content hash); {consequence}. Add photos (a few hundred per label "
            "give metrics worth reading)."
        )
    return warnings


def find_imbalance(statistics: dict) -> list[str]:
    """A warning when one label has IMBALANCE_RATIO times the other's accepted images."""
    per_label = collections.Counter()
    for (_, label), count in statistics["accepted"].items():
        per_label[label] += count
    counts = [per_label[label] for label in contract.LABELS]
    if min(counts) == 0 or max(counts) / min(counts) < IMBALANCE_RATIO:
        return []
    large, small = sorted(contract.LABELS, key=lambda label: -per_label[label])
    return [
        f"class imbalance: {per_label[large]} {large} vs {per_label[small]} {small} images "
        f"({per_label[large] / per_label[small]:.1f}:1); always answering '{large}' would score "
        f"{per_label[large] / sum(counts):.0%} accuracy. Training with class weights (the "
        "recommended and seed_augmented recipes, or --class-weights) weighs each class by the "
        "inverse of its frequency (train_params.json records the weights); judge the model by "
        "its AUC and per-class recall in metrics.json, not by accuracy alone."
    ]


# ---------------------------------------------------------------------------------------------
# Samples.


def thumbnail(image: np.ndarray, side: int = _THUMBNAIL_SIDE) -> np.ndarray:
    """A (side, side, 3) uint8 preview of the transform's pixels, for the samples plot."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BOX))


class Samples(beam.PTransform):
    """{"accepted": CleanImages, "rows": manifest rows} -> one list of sample tiles.

    Deterministic: the accepted images with the smallest content hashes per label, and per
    reason the rejected file with the first path, so reruns draw the same grid.
    """

    def expand(self, inputs):
        accepted = (
            inputs["accepted"]
            | "KeyByLabel" >> beam.Map(lambda image: (image.label, (image.sha256, image.image)))
            | "FirstPerLabel" >> beam.combiners.Top.SmallestPerKey(SAMPLES_PER_ROW, key=_first)
            | "Thumbnails"
            >> beam.FlatMap(
                lambda element: [
                    {"label": element[0], "reason": "", "image": thumbnail(image)}
                    for _, image in element[1]
                ]
            )
        )
        rejected = (
            inputs["rows"]
            | "Rejected" >> beam.Filter(lambda row: row["status"] == validate.REJECTED)
            | "KeyByReason" >> beam.Map(lambda row: (row["reason"], (row["path"], row["label"])))
            | "FirstPerReason" >> beam.combiners.Top.SmallestPerKey(1)
            | "Tiles"
            >> beam.Map(
                lambda element: {
                    "label": element[1][0][1],
                    "reason": element[0],
                    "path": element[1][0][0],
                    "image": None,
                }
            )
        )
        return (accepted, rejected) | "AllSamples" >> beam.Flatten()


def _first(item):
    return item[0]


# ---------------------------------------------------------------------------------------------
# Writing the report.


class WriteReport(beam.PTransform):
    """{"rows", "accepted", "manifest"} -> OUT/report.md, OUT/plots/, then OUT/summary.json."""

    def __init__(self, output_dir: str, data: config_lib.DataConfig):
        super().__init__()
        self._output_dir = output_dir
        self._data = data

    def expand(self, inputs):
        statistics = inputs["rows"] | "Statistics" >> beam.CombineGlobally(Statistics())
        samples = inputs | "Samples" >> Samples()
        return statistics | "Write" >> beam.Map(
            write_report,
            self._output_dir,
            self._data,
            beam.pvalue.AsList(samples),
            beam.pvalue.AsList(inputs["manifest"]),  # waits for manifest.csv
        )


def write_report(
    statistics: dict,
    output_dir: str,
    data: config_lib.DataConfig,
    samples: list[dict],
    written: list | None = None,
) -> dict:
    """Writes the plots, report.md and summary.json (last); returns the summary.

    Args:
        statistics: the `Statistics` of every manifest row.
        output_dir: OUT (any Beam file system).
        data: the data job's configuration (the report shows its transform).
        samples: sample tiles from `Samples`.
        written: only waited for (the manifest's path), so that summary.json comes last.
    """
    del written
    summary = summarize(statistics)
    summary["warnings"] = (
        find_imbalance(statistics)
        + find_small_splits(statistics, data)
        + find_few_faces(statistics, data)
        + find_shortcuts(statistics)
    )
    summary["transform"] = config_lib.to_dict(data.transform)
    for name, figure in {
        "class_balance": _plot_class_balance(summary),
        "sizes": _plot_sizes(statistics),
        "rejects": _plot_rejects(summary),
        "samples": _plot_samples(samples),
    }.items():
        _save(figure, FileSystems.join(output_dir, PLOTS_DIR, f"{name}.png"))
    artifacts.write_text(
        FileSystems.join(output_dir, contract.REPORT_FILE), render_markdown(summary)
    )
    for warning in summary["warnings"]:
        logger.warning("Data: %s", warning)
    artifacts.write_text(
        FileSystems.join(output_dir, contract.SUMMARY_FILE), json.dumps(summary, indent=2) + "\n"
    )
    return summary


def render_markdown(summary: dict) -> str:
    """The report's text: totals, warnings, tables and the plots."""
    status = summary["status"]
    lines = [
        "# Data report",
        "",
        f"{summary['input_files']} input files: "
        + ", ".join(f"{count} {name}" for name, count in status.items())
        + ".",
        "",
    ]
    if summary.get("warnings"):
        lines += ["## Warnings", ""]
        lines += [f"- {warning}" for warning in summary["warnings"]]
        lines.append("")
    lines += [
        "## Accepted images by split and label",
        "",
        "| split | " + " | ".join(contract.LABELS) + " |",
        "|---|" + "---|" * len(contract.LABELS),
    ]
    for split, counts in summary["accepted"].items():
        lines.append(
            f"| {split} | " + " | ".join(str(counts[label]) for label in contract.LABELS) + " |"
        )
    faces = summary["faces"]
    if faces["sampled"]:
        lines += [
            "",
            f"Faces: MTCNN finds a face in {faces['found']} of {faces['sampled']} sampled accepted "
            f"images (one in {validate.FACE_SAMPLE_EVERY}, chosen by content hash; the `face` "
            "column of the manifest).",
        ]
    lines += ["", "![class balance](plots/class_balance.png)", "", "## Rejects", ""]
    if summary["reason"]:
        lines += ["| reason | files | meaning |", "|---|---|---|"]
        for reason, count in summary["reason"].items():
            lines.append(f"| {reason} | {count} | {validate.REASONS.get(reason, '')} |")
    else:
        lines.append("No file was rejected.")
    transform = ", ".join(f"{key}={value}" for key, value in summary["transform"].items())
    lines += [
        "",
        f"Duplicates (exact copies of an accepted image, same label): "
        f"{status.get(validate.DUPLICATE, 0)}.",
        "",
        "![rejects by reason](plots/rejects.png)",
        "",
        "## Original sizes",
        "",
        "![sizes](plots/sizes.png)",
        "",
        "## Samples",
        "",
        "Top: accepted images as training (and serving) sees them, the output of the one "
        f"transform ({transform}). Below, if any: one rejected file per reason.",
        "",
        "![samples](plots/samples.png)",
        "",
        f"Every input file has one row in `{contract.MANIFEST_FILE}`; the counts are in "
        f"`{contract.SUMMARY_FILE}`.",
        "",
    ]
    return "\n".join(lines)


def _new_figure(**options) -> "figure_lib.Figure":
    """A matplotlib Figure (the object API: no pyplot state), matplotlib imported on first use."""
    from matplotlib import figure as figure_lib

    return figure_lib.Figure(**options)


def _save(figure: "figure_lib.Figure", path: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    artifacts.write_bytes(path, buffer.getvalue())


def _plot_class_balance(summary: dict) -> "figure_lib.Figure":
    figure = _new_figure(figsize=(6, 3.5))
    axes = figure.subplots()
    positions = np.arange(len(splits.SPLITS))
    width = 0.8 / len(contract.LABELS)
    for index, label in enumerate(contract.LABELS):
        counts = [summary["accepted"][split][label] for split in splits.SPLITS]
        bars = axes.bar(
            positions + index * width, counts, width, label=label, color=_LABEL_COLOURS[label]
        )
        axes.bar_label(bars, fontsize=8)
    axes.set_xticks(positions + width * (len(contract.LABELS) - 1) / 2, splits.SPLITS)
    axes.set_ylabel("accepted images")
    axes.set_title("Class balance by split")
    axes.legend()
    return figure


def _plot_sizes(statistics: dict) -> "figure_lib.Figure":
    """Original sizes, binned: a marker per (width, height) bin, its area the file count."""
    from matplotlib import ticker

    figure = _new_figure(figsize=(6, 4.5))
    axes = figure.subplots()
    for label in contract.LABELS:
        for accepted, marker in ((True, "o"), (False, "x")):
            points = [
                (width, height, count)
                for (width, height, row_label, row_accepted), count in statistics["sizes"].items()
                if row_label == label and row_accepted == accepted
            ]
            if points:
                widths, heights, counts = zip(*sorted(points), strict=True)
                axes.scatter(
                    widths,
                    heights,
                    s=[8 + 4 * math.sqrt(count) for count in counts],
                    marker=marker,
                    alpha=0.6,
                    color=_LABEL_COLOURS[label],
                    label=f"{label}, {'accepted' if accepted else 'not accepted'}",
                )
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):  # plain numbers (300, not 3x10^2), no minor labels
        axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel("original width (pixels)")
    axes.set_ylabel("original height (pixels)")
    axes.set_title("Original image sizes (marker area: number of files)")
    if axes.has_data():
        axes.legend(fontsize=8)
    return figure


def _plot_rejects(summary: dict) -> "figure_lib.Figure":
    counts = dict(summary["reason"])
    if summary["status"].get(validate.DUPLICATE):
        counts["(duplicate)"] = summary["status"][validate.DUPLICATE]
    figure = _new_figure(figsize=(6, 0.5 + 0.35 * max(1, len(counts))))
    axes = figure.subplots()
    if counts:
        names = sorted(counts, key=counts.get)
        bars = axes.barh(names, [counts[name] for name in names], color="#b04040")
        axes.bar_label(bars, fontsize=8)
    else:
        axes.text(0.5, 0.5, "no rejects", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("files")
    axes.set_title("Files not accepted, by reason")
    return figure


def _plot_samples(samples: list[dict]) -> "figure_lib.Figure":
    """A grid: accepted images (both labels, alternating) on top, one per reject reason below."""
    by_label = {
        label: [sample for sample in samples if not sample["reason"] and sample["label"] == label]
        for label in contract.LABELS
    }
    accepted = [
        by_label[label][index]
        for index in range(SAMPLES_PER_ROW)
        for label in contract.LABELS
        if index < len(by_label[label])
    ][:SAMPLES_PER_ROW]
    rejected = sorted((s for s in samples if s["reason"]), key=lambda s: s["reason"])
    grid = [accepted, rejected[:SAMPLES_PER_ROW]] if rejected else [accepted]
    figure = _new_figure(figsize=(SAMPLES_PER_ROW * 1.4, len(grid) * 1.7))
    axes = figure.subplots(len(grid), SAMPLES_PER_ROW, squeeze=False)
    for line, tiles in enumerate(grid):
        for column in range(SAMPLES_PER_ROW):
            _draw_tile(axes[line][column], tiles[column] if column < len(tiles) else None)
    title = "Accepted (top) and rejected (bottom) samples" if rejected else "Accepted samples"
    figure.suptitle(title, fontsize=10)
    return figure


def _draw_tile(axes, sample: dict | None) -> None:
    axes.set_axis_off()
    if sample is None:
        return
    picture = sample["image"]
    if picture is None:
        picture = np.full((_THUMBNAIL_SIDE, _THUMBNAIL_SIDE, 3), 220, dtype=np.uint8)
        name = os.path.basename(sample.get("path", ""))[:18]
        axes.text(_THUMBNAIL_SIDE / 2, _THUMBNAIL_SIDE / 2, name, ha="center", fontsize=6)
    axes.imshow(picture)
    title = sample["label"] + (f"\n{sample['reason']}" if sample["reason"] else "")
    axes.set_title(title, fontsize=7)
