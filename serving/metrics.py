"""Prometheus metrics in the text exposition format, named as TF Serving's exporter names them.

TF Serving publishes its monitoring metrics (`/tensorflow/serving/request_count`, ...) at
`/monitoring/prometheus/metrics`, with `/` turned into `:`. The same names are used here, so
existing dashboards and alerts keep working; batching metrics follow TensorFlow's
`/tensorflow/serving/batching/...` names.
"""

import bisect
import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PATH = "/monitoring/prometheus/metrics"

# Microseconds, roughly x2.5 apart: 100 us to 100 s.
LATENCY_BUCKETS_MICROS = tuple(round(100 * 10 ** (step / 2.5)) for step in range(16))
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{name}="{_escape(str(value))}"' for name, value in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()):
        self.name = name
        self.help_text = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(str(labels.get(name, "")) for name in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()):
        super().__init__(name, help_text, label_names)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        """The sum over every label set."""
        with self._lock:
            return sum(self._values.values())

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [
            f"{self.name}{_labels_text(self.label_names, key)} {_number(value)}"
            for key, value in items
        ]


class Gauge(Counter):
    """A value that goes up and down (set, not accumulated)."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)


class Histogram(_Metric):
    """Counts of observations per bucket, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        label_names: Sequence[str] = (),
    ):
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list] = {}  # key -> [bucket counts, sum, count]

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.setdefault(key, [[0] * (len(self.buckets) + 1), 0.0, 0])
            series[0][index] += 1
            series[1] += value
            series[2] += 1

    def count(self, **labels: str) -> int:
        series = self._series.get(self._key(labels))
        return series[2] if series else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((key, [list(s[0]), s[1], s[2]]) for key, s in self._series.items())
        lines = self.header()
        for key, (counts, total, count) in items:
            cumulative = 0
            for bound, bucket_count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += bucket_count
                le = _labels_text(self.label_names, key, f'le="{_number(bound)}"')
                lines.append(f"{self.name}_bucket{le} {cumulative}")
            labels = _labels_text(self.label_names, key)
            lines.append(f"{self.name}_sum{labels} {_number(total)}")
            lines.append(f"{self.name}_count{labels} {count}")
        return lines


class ServerMetrics:
    """Everything `happysad serve` reports."""

    def __init__(self):
        self.request_count = Counter(
            ":tensorflow:serving:request_count",
            "The total number of requests.",
            ("model_name", "status"),
        )
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for processing REST requests.",
            LATENCY_BUCKETS_MICROS,
            ("model_name", "API", "entrypoint"),
        )
        self.batch_size = Histogram(
            ":tensorflow:serving:batching:processed_batch_size",
            "Distribution of the number of items in each batch run by the model.",
            BATCH_SIZE_BUCKETS,
            ("model_name",),
        )
        self.batch_queuing_latency = Histogram(
            ":tensorflow:serving:batching:queuing_latency",
            "Distribution of wall time (in microseconds) a batch's oldest task waited.",
            LATENCY_BUCKETS_MICROS,
            ("model_name",),
        )
        self.queued_tasks = Gauge(
            ":tensorflow:serving:batching:queued_tasks",
            "Tasks waiting for a batch thread.",
            ("model_name",),
        )
        self.model_warmup_latency = Histogram(
            ":tensorflow:serving:model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            LATENCY_BUCKETS_MICROS,
            ("model_path", "status"),
        )
        self.available_versions = Gauge(
            ":tensorflow:serving:model_available_versions",
            "How many versions of the model are AVAILABLE.",
            ("model_name",),
        )
        self.latest_version = Gauge(
            ":tensorflow:serving:model_latest_version",
            "The version that requests without a version go to (0 when none).",
            ("model_name",),
        )

    def render(self) -> str:
        metrics = (
            self.request_count,
            self.request_latency,
            self.batch_size,
            self.batch_queuing_latency,
            self.queued_tasks,
            self.model_warmup_latency,
            self.available_versions,
            self.latest_version,
        )
        lines = [line for metric in metrics for line in metric.render()]
        return "\n".join(lines) + "\n"
