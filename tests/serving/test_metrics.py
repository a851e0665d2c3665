"""The Prometheus text format the metrics endpoint writes."""

from serving import metrics


def test_counter_renders_per_label_set():
    counter = metrics.Counter(":tensorflow:serving:request_count", "Requests.", ("status",))
    counter.inc(status="OK")
    counter.inc(2, status="OK")
    counter.inc(status='say "no"\n')
    lines = counter.render()
    assert lines[:2] == [
        "# HELP :tensorflow:serving:request_count Requests.",
        "# TYPE :tensorflow:serving:request_count counter",
    ]
    assert ':tensorflow:serving:request_count{status="OK"} 3' in lines
    assert ':tensorflow:serving:request_count{status="say \\"no\\"\\n"} 1' in lines
    assert counter.total() == 4
    unlabelled = metrics.Counter("runs", "Runs.")
    unlabelled.inc(1234567)
    assert unlabelled.render()[-1] == "runs{} 1234567"  # TF Serving writes {} and an int


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    histogram = metrics.Histogram("batch", "Batch sizes.", (1, 8, 32), ("model_name",))
    for size in (1, 4, 32, 40):
        histogram.observe(size, model_name="m")
    lines = histogram.render()
    assert 'batch_bucket{model_name="m",le="1"} 1' in lines
    assert 'batch_bucket{model_name="m",le="8"} 2' in lines
    assert 'batch_bucket{model_name="m",le="32"} 3' in lines
    assert 'batch_bucket{model_name="m",le="+Inf"} 4' in lines
    assert 'batch_sum{model_name="m"} 77' in lines
    assert 'batch_count{model_name="m"} 4' in lines
    assert histogram.count(model_name="m") == 4


def test_latency_buckets_are_tf_servings():
    """Exponential(10, 1.8, 33), written with six significant digits as absl writes them."""
    histogram = metrics.Histogram("latency", "Latency.", metrics.LATENCY_BUCKETS_MICROS)
    histogram.observe(11)
    lines = histogram.render()
    assert 'latency_bucket{le="10"} 0' in lines
    assert 'latency_bucket{le="18"} 1' in lines
    assert 'latency_bucket{le="104.976"} 1' in lines
    assert len([line for line in lines if "_bucket" in line]) == 34


def test_server_metrics_use_tf_servings_names():
    text = metrics.ServerMetrics().render()
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert all(name.startswith(":tensorflow:serving:") for name in names)
    assert ":tensorflow:serving:request_count" in names
    assert ":tensorflow:serving:batching_session:queuing_latency" in names
    assert text.endswith("\n")
