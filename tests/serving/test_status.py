"""Error codes map to TF Serving's HTTP statuses; TF's own errors keep their code, not their trace."""

import pytest
import tensorflow as tf

from serving import status


@pytest.mark.parametrize(
    "code, http_status",
    [
        (status.Code.INVALID_ARGUMENT, 400),
        (status.Code.FAILED_PRECONDITION, 400),
        (status.Code.NOT_FOUND, 404),
        (status.Code.RESOURCE_EXHAUSTED, 429),
        (status.Code.UNAVAILABLE, 503),
        (status.Code.DEADLINE_EXCEEDED, 504),
        (status.Code.INTERNAL, 500),
        (status.Code.UNIMPLEMENTED, 501),
    ],
)
def test_http_status_follows_tf_serving(code, http_status):
    assert status.ServingError(code, "x").http_status == http_status


def test_an_error_may_name_its_own_http_status():
    error = status.ServingError(status.Code.RESOURCE_EXHAUSTED, "too big", http_status=413)
    assert error.http_status == 413


def test_tensorflow_errors_keep_their_canonical_code():
    exhausted = status.from_exception(tf.errors.ResourceExhaustedError(None, None, "OOM"))
    assert (exhausted.code, exhausted.http_status, exhausted.message) == (
        status.Code.RESOURCE_EXHAUSTED,
        429,
        "OOM",
    )
    invalid = status.from_exception(tf.errors.InvalidArgumentError(None, None, "bad"))
    assert invalid.http_status == 400


def test_python_errors_from_a_signature_call_are_the_callers_mistake():
    assert status.from_exception(TypeError("wrong dtype")).code == status.Code.INVALID_ARGUMENT
    assert status.from_exception(RuntimeError("bug")).code == status.Code.INTERNAL


def test_graph_execution_preamble_is_dropped_without_a_stack_trace_too():
    message = (
        "Graph execution error:\n\nassertion failed: [not_an_image: the content is not an image]"
        "\n\t [[{{node map/while/Assert/Assert}}]]"
    )
    error = status.from_exception(tf.errors.InvalidArgumentError(None, None, message))
    assert error.message == (
        "assertion failed: [not_an_image: the content is not an image]"
        "\n\t [[{{node map/while/Assert/Assert}}]]"
    )


def test_graph_execution_preamble_is_dropped():
    message = (
        "Graph execution error:\n\nDetected at node decode defined at (most recent call last):\n"
        '  File "model.py", line 3\n<stack traces unavailable>\n'
        "Unknown image file format.\n\t [[{{node decode}}]] [Op:__inference_serve_1]"
    )
    error = status.from_exception(tf.errors.InvalidArgumentError(None, None, message))
    assert error.message == (
        "Unknown image file format.\n\t [[{{node decode}}]] [Op:__inference_serve_1]"
    )
