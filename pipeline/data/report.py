"""The preprocessing report: counts, shortcut warnings, and plots a person can skim in a minute."""

import collections
import io
import json
import logging
import math
import os

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, never a window (and no display on workers)
from matplotlib import pyplot, ticker  # noqa: E402

from pipeline.data import imaging, preprocess, schema, splits

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"

# A property "predicts the label by itself" when one threshold or one value table on it alone
# reaches this balanced accuracy over the accepted images, with enough images of each label.
SHORTCUT_ACCURACY = 0.9
SHORTCUT_MIN_PER_LABEL = 10
# Categorical properties (few values) and numeric ones (split by one threshold).
CATEGORICAL_PROPERTIES = ("format", "mode", "grayscale", "orientation", "face", "extension")
NUMERIC_PROPERTIES = ("width", "height", "pixels", "aspect_ratio", "bytes", "brightness")
_MAX_CATEGORIES = 12
SAMPLES_PER_ROW = 8
_THUMBNAIL_SIDE = 96
_LABEL_COLOURS = {"happy": "#e6a100", "sad": "#3a6ea5"}


def summarize(rows: list[dict]) -> dict:
    """Counts by status, reason, label and split; `input_files` is the number of rows.

    `split` counts accepted images only (rejected ones have no split); `accepted` breaks them
    down by split and label, which is the class balance training will see.
    """
    accepted = [row for row in rows if row["status"] == imaging.ACCEPTED]
    by_split_and_label = {split: {label: 0 for label in schema.LABELS} for split in splits.SPLITS}
    for row in accepted:
        by_split_and_label[row["split"]][row["label"]] += 1
    return {
        "input_files": len(rows),
        "status": _counts(row["status"] for row in rows),
        "reason": _counts(row["reason"] for row in rows if row["reason"]),
        "label": _counts(row["label"] for row in rows),
        "split": _counts(row["split"] for row in accepted),
        "accepted": by_split_and_label,
    }


def _counts(values) -> dict:
    return dict(sorted(collections.Counter(values).items()))


def summary_json(summary: dict) -> str:
    return json.dumps(summary, indent=2, sort_keys=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Shortcuts: properties that give the label away.


def find_shortcuts(rows: list[dict]) -> list[str]:
    """One warning sentence per image property that predicts the label by itself.

    For example all happy images grayscale and all sad ones colour: a classifier would learn
    the colour, not the expression. Each property is scored by the balanced accuracy of the
    best rule that looks at it alone (a value table for categorical properties, one threshold
    for numeric ones), over the accepted images.
    """
    accepted = [_properties(row) for row in rows if row["status"] == imaging.ACCEPTED]
    per_label = collections.Counter(row["label"] for row in accepted)
    if len(per_label) < 2 or min(per_label.values()) < SHORTCUT_MIN_PER_LABEL:
        return []
    warnings = []
    for name in CATEGORICAL_PROPERTIES + NUMERIC_PROPERTIES:
        pairs = [(row[name], row["label"]) for row in accepted if row[name] is not None]
        if len({label for _, label in pairs}) < 2:
            continue
        if name in CATEGORICAL_PROPERTIES:
            finding = _categorical_rule(pairs)
        else:
            finding = _threshold_rule(pairs)
        if finding and finding[0] >= SHORTCUT_ACCURACY:
            accuracy, rule = finding
            warnings.append(
                f"{name} predicts the label by itself ({rule}; balanced accuracy "
                f"{accuracy:.0%} over {len(pairs)} accepted images): a classifier could learn "
                f"this shortcut instead of the expression."
            )
    return warnings


def _properties(row: dict) -> dict:
    """A manifest row's properties as Python values (None where unknown)."""
    width, height = _number(row["width"]), _number(row["height"])
    return {
        "label": row["label"],
        "format": row["format"] or None,
        "mode": row["mode"] or None,
        "grayscale": row["grayscale"] or None,
        "orientation": row["orientation"] or None,
        "face": row["face"] or None,
        "extension": os.path.splitext(row["path"])[1].lower() or "(none)",
        "width": width,
        "height": height,
        "pixels": width * height if width and height else None,
        "aspect_ratio": round(width / height, 3) if width and height else None,
        "bytes": _number(row["bytes"]),
        "brightness": _number(row["brightness"]),
    }


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _categorical_rule(pairs) -> tuple[float, str] | None:
    """Balanced accuracy of predicting, for each value, the label it is most typical of."""
    table = collections.defaultdict(collections.Counter)
    for value, label in pairs:
        table[str(value)][label] += 1
    if len(table) > _MAX_CATEGORIES or len(table) < 2:
        return None
    totals = collections.Counter(label for _, label in pairs)
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


def _threshold_rule(pairs) -> tuple[float, str] | None:
    """Balanced accuracy of the best single threshold on a numeric property."""
    values = np.array([value for value, _ in pairs], dtype=np.float64)
    labels = sorted({label for _, label in pairs})
    if len(labels) != 2 or len(np.unique(values)) < 2:
        return None
    is_first = np.array([label == labels[0] for _, label in pairs])
    order = np.argsort(values, kind="stable")
    values, is_first = values[order], is_first[order]
    first_below = np.cumsum(is_first)  # first-label images at or below each cut
    second_below = np.cumsum(~is_first)
    first_total, second_total = first_below[-1], second_below[-1]
    cuts = np.flatnonzero(values[:-1] < values[1:])  # only between distinct values
    # Rule A: first label below the cut. Rule B: the reverse.
    rule_a = (first_below[cuts] / first_total + 1 - second_below[cuts] / second_total) / 2
    rule_b = 1 - rule_a
    best_a, best_b = int(np.argmax(rule_a)), int(np.argmax(rule_b))
    if rule_a[best_a] >= rule_b[best_b]:
        accuracy, cut, below = rule_a[best_a], cuts[best_a], labels[0]
    else:
        accuracy, cut, below = rule_b[best_b], cuts[best_b], labels[1]
    threshold = (values[cut] + values[cut + 1]) / 2
    above = labels[1] if below == labels[0] else labels[0]
    return float(accuracy), f"under {threshold:g} mostly {below}, over it mostly {above}"


# ---------------------------------------------------------------------------------------------
# The report and its plots.


def write_report(output: str, rows: list[dict], summary: dict) -> str:
    """Writes OUT/report.md and its plots under OUT/plots/; returns the report's path."""
    plots = {
        "class_balance": _plot_class_balance(summary),
        "sizes": _plot_sizes(rows),
        "rejects": _plot_rejects(summary),
        "samples": _plot_samples(output, rows),
    }
    for name, figure in plots.items():
        _save(figure, preprocess.FileSystems.join(output, PLOTS_DIR, f"{name}.png"))
    path = preprocess.FileSystems.join(output, REPORT_FILE)
    preprocess.write_atomically(path, render_markdown(summary).encode("utf-8"))
    logger.info("Wrote the report to %s", path)
    return path


def render_markdown(summary: dict) -> str:
    """The report's text: totals, shortcut warnings, tables and the plots."""
    status = summary["status"]
    lines = [
        "# Preprocessing report",
        "",
        f"{summary['input_files']} input files: "
        + ", ".join(f"{count} {name}" for name, count in status.items())
        + ".",
        "",
    ]
    if summary.get("warnings"):
        lines += ["## Warnings", ""]
        lines += [f"- **Shortcut:** {warning}" for warning in summary["warnings"]]
        lines.append("")
    lines += [
        "## Accepted images by split and label",
        "",
        "| split | " + " | ".join(schema.LABELS) + " |",
    ]
    lines.append("|---|" + "---|" * len(schema.LABELS))
    for split, counts in summary["accepted"].items():
        lines.append(
            f"| {split} | " + " | ".join(str(counts[label]) for label in schema.LABELS) + " |"
        )
    lines += ["", "![class balance](plots/class_balance.png)", "", "## Rejects", ""]
    if summary["reason"]:
        lines += ["| reason | files | meaning |", "|---|---|---|"]
        for reason, count in summary["reason"].items():
            lines.append(f"| {reason} | {count} | {imaging.REASONS.get(reason, '')} |")
    else:
        lines.append("No file was rejected.")
    lines += [
        "",
        f"Duplicates (exact copies of an accepted image, same label): "
        f"{status.get(imaging.DUPLICATE, 0)}.",
        "",
        "![rejects by reason](plots/rejects.png)",
        "",
        "## Original sizes",
        "",
        "![sizes](plots/sizes.png)",
        "",
        "## Samples (top: accepted, as training sees them; below, if any: rejected, with the reason)",
        "",
        "![samples](plots/samples.png)",
        "",
        "Every input file has one row in `manifest.csv`; counts are in `summary.json`.",
        "",
    ]
    return "\n".join(lines)


def _save(figure, path: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot.close(figure)
    preprocess.write_atomically(path, buffer.getvalue())


def _plot_class_balance(summary: dict):
    figure, axes = pyplot.subplots(figsize=(6, 3.5))
    positions = np.arange(len(splits.SPLITS))
    width = 0.8 / len(schema.LABELS)
    for index, label in enumerate(schema.LABELS):
        counts = [summary["accepted"][split][label] for split in splits.SPLITS]
        bars = axes.bar(
            positions + index * width, counts, width, label=label, color=_LABEL_COLOURS[label]
        )
        axes.bar_label(bars, fontsize=8)
    axes.set_xticks(positions + width * (len(schema.LABELS) - 1) / 2, splits.SPLITS)
    axes.set_ylabel("accepted images")
    axes.set_title("Class balance by split")
    axes.legend()
    return figure


def _plot_sizes(rows: list[dict]):
    figure, axes = pyplot.subplots(figsize=(6, 4.5))
    for label in schema.LABELS:
        for accepted, marker in ((True, "o"), (False, "x")):
            points = [
                (_number(row["width"]), _number(row["height"]))
                for row in rows
                if row["label"] == label
                and (row["status"] == imaging.ACCEPTED) == accepted
                and _number(row["width"])
                and _number(row["height"])
            ]
            if points:
                widths, heights = zip(*points, strict=True)
                axes.scatter(
                    widths,
                    heights,
                    s=12,
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
    axes.set_title("Original image sizes")
    if axes.has_data():
        axes.legend(fontsize=8)
    return figure


def _plot_rejects(summary: dict):
    counts = dict(summary["reason"])
    if summary["status"].get(imaging.DUPLICATE):
        counts["(duplicate)"] = summary["status"][imaging.DUPLICATE]
    figure, axes = pyplot.subplots(figsize=(6, 0.5 + 0.35 * max(1, len(counts))))
    if counts:
        names = sorted(counts, key=counts.get)
        bars = axes.barh(names, [counts[name] for name in names], color="#b04040")
        axes.bar_label(bars, fontsize=8)
    else:
        axes.text(0.5, 0.5, "no rejects", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("files")
    axes.set_title("Files not accepted, by reason")
    return figure


def _plot_samples(output: str, rows: list[dict]):
    """A grid: accepted images (both labels) on top, rejected ones (varied reasons) below."""
    accepted = _pick_accepted(rows)
    rejected = _pick_rejected(rows)
    grid = [accepted, rejected] if rejected else [accepted]
    columns = SAMPLES_PER_ROW
    figure, axes = pyplot.subplots(
        len(grid), columns, figsize=(columns * 1.4, len(grid) * 1.7), squeeze=False
    )
    for line, samples in enumerate(grid):
        for column in range(columns):
            _draw_tile(
                axes[line][column], samples[column] if column < len(samples) else None, output
            )
    title = "Accepted (top) and rejected (bottom) samples" if rejected else "Accepted samples"
    figure.suptitle(title, fontsize=10)
    return figure


def _pick_accepted(rows: list[dict]) -> list[dict]:
    by_label = {
        label: sorted(
            (r for r in rows if r["status"] == imaging.ACCEPTED and r["label"] == label),
            key=lambda row: row["sha256"],
        )
        for label in schema.LABELS
    }
    picked = []
    for index in range(SAMPLES_PER_ROW):
        for label in schema.LABELS:
            if index < len(by_label[label]) and len(picked) < SAMPLES_PER_ROW:
                picked.append(by_label[label][index])
    return picked


def _pick_rejected(rows: list[dict]) -> list[dict]:
    """One file per reason first (so the grid shows the variety), then more of the same."""
    rejected = sorted(
        (row for row in rows if row["status"] == imaging.REJECTED),
        key=lambda row: (row["reason"], row["path"]),
    )
    first_of_each = list({row["reason"]: row for row in reversed(rejected)}.values())[::-1]
    rest = [row for row in rejected if row not in first_of_each]
    return (first_of_each + rest)[:SAMPLES_PER_ROW]


def _draw_tile(axes, row: dict | None, output: str) -> None:
    axes.set_axis_off()
    if row is None:
        return
    if row["status"] == imaging.ACCEPTED:
        path = preprocess.image_path(output, row["split"], row["label"], row["path"], row["sha256"])
        picture, title = _thumbnail(path), f"{row['label']}"
    else:
        picture, title = _thumbnail(row["path"]), f"{row['label']}\n{row['reason']}"
    if picture is None:
        picture = np.full((_THUMBNAIL_SIDE, _THUMBNAIL_SIDE, 3), 200, dtype=np.uint8)
        axes.text(_THUMBNAIL_SIDE / 2, _THUMBNAIL_SIDE / 2, "no preview", ha="center", fontsize=7)
    axes.imshow(picture)
    axes.set_title(title, fontsize=7)


def _thumbnail(path: str) -> np.ndarray | None:
    """A preview of any file that decodes safely; None for the rest (never raises)."""
    data, _ = preprocess.read_bytes(schema.SourceImage(path, ""), max_bytes=50 * 2**20)
    return imaging.thumbnail(data, _THUMBNAIL_SIDE) if data else None
