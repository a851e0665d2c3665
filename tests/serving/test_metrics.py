"""The Prometheus text format the metrics endpoint writes."""

from serving import metrics


def test_counter_and_gauge_render_per_label_set():
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

    gauge = metrics.Gauge("queued", "Queued.")
    gauge.set(5)
    gauge.set(2)
    assert gauge.render()[-1] == "queued 2"


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


def test_server_metrics_render_everything_once():
    text = metrics.ServerMetrics().render()
    assert text.count("# TYPE") == 8
    assert text.endswith("\n")
