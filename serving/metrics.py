"""Prometheus metrics in the text exposition format, named and shaped as TF Serving exports them.

TF Serving publishes its monitoring metrics (`/tensorflow/serving/request_count`, ...) at the
path of `--monitoring_config_file`'s `prometheus_config` (default
`/monitoring/prometheus/metrics`, and only when `enable: true`), with `/` turned into `:`
(tensorflow_serving/util/prometheus_exporter.cc). The metrics here are the ones TF Serving
defines for what this server does, with its names, labels and bucket limits
(servables/tensorflow/util.cc, saved_model_warmup_util.cc, batching/batching_session.cc), so
existing dashboards and alerts keep working.

prometheus_client is not used: it appends `_total` (and `_created`) to counters, which would
rename `:tensorflow:serving:request_count`.
"""

import bisect
import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_PATH = "/monitoring/prometheus/metrics"


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """TensorFlow's monitoring::Buckets::Exponential(scale, growth, count) limits."""
    return tuple(scale * growth**index for index in range(count))


# Microseconds: scale 10, power 1.8, 33 buckets (~20 minutes), as TF Serving's latencies.
LATENCY_BUCKETS_MICROS = exponential_buckets(10, 1.8, 33)
# batching_session.cc: scale 100, power 1.2, 52 buckets (~1 second).
QUEUING_BUCKETS_MICROS = exponential_buckets(100, 1.2, 52)
# util.cc: tf.Examples per request, 1 to 16384.
EXAMPLE_COUNT_BUCKETS = exponential_buckets(1, 2, 15)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{name}="{_escape(str(value))}"' for name, value in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}"  # TF Serving writes {} for a metric without labels


def _number(value: float) -> str:
    """As absl::StrCat writes a double: at most six significant digits."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{float(value):.6g}"


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
            f"{self.name}{_labels_text(self.label_names, key)} {int(value)}" for key, value in items
        ]


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
    """Everything `happysad serve` reports, under TF Serving's names."""

    def __init__(self):
        self.request_count = Counter(
            ":tensorflow:serving:request_count",
            "The total number of requests.",
            ("model_name", "status"),
        )
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            LATENCY_BUCKETS_MICROS,
            ("model_name", "API", "entrypoint"),
        )
        self.runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            LATENCY_BUCKETS_MICROS,
            ("model_name", "API", "runtime"),
        )
        self.request_example_counts = Histogram(
            ":tensorflow:serving:request_example_counts",
            "The number of tensorflow.Examples per request.",
            EXAMPLE_COUNT_BUCKETS,
            ("model",),
        )
        self.request_example_count_total = Counter(
            ":tensorflow:serving:request_example_count_total",
            "The total number of tensorflow.Examples.",
            ("model",),
        )
        self.model_warmup_latency = Histogram(
            ":tensorflow:serving:model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            LATENCY_BUCKETS_MICROS,
            ("model_path", "status"),
        )
        self.model_warmup_records_read = Counter(
            ":tensorflow:serving:model_warmup_records_read",
            "Total number of warmup records read during model warmup.",
            ("model_path", "status"),
        )
        self.batching_queuing_latency = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            QUEUING_BUCKETS_MICROS,
            ("thread_pool_name",),
        )
        self.wrapped_run_count = Counter(
            ":tensorflow:serving:batching_session:wrapped_run_count",
            "Total count of run calls on the wrapped session",
        )

    def render(self) -> str:
        """The exposition text of every metric that has a value."""
        metrics = (
            self.request_count,
            self.request_latency,
            self.runtime_latency,
            self.request_example_counts,
            self.request_example_count_total,
            self.model_warmup_latency,
            self.model_warmup_records_read,
            self.batching_queuing_latency,
            self.wrapped_run_count,
        )
        lines = [line for metric in metrics for line in metric.render()]
        return "\n".join(lines) + "\n"
