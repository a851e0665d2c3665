"""TF Serving's JSON tensor rules (util/json_tensor.cc), checked without a server or a model."""

import base64
import json

import numpy as np
import orjson
import pytest
from tensorflow.core.example import example_pb2

from serving import status, tensor_json

FLOAT = {"x": "DT_FLOAT"}
NAMED = {"tag": "DT_STRING", "signal": "DT_INT32", "sensor": "DT_FLOAT"}


def parse(document, dtypes):
    return tensor_json.parse_predict_inputs(document, dtypes)


def invalid(message_part):
    return pytest.raises(status.ServingError, match=message_part)


# -- request bodies ------------------------------------------------------------------------


def test_load_document_accepts_nan_and_infinity_like_tf_serving():
    document = tensor_json.load_document(b'{"instances": [1.0, NaN, Infinity, -Infinity]}')
    values = document["instances"]
    assert values[0] == 1.0 and np.isnan(values[1]) and values[2:] == [np.inf, -np.inf]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "JSON Parse error: The document is empty"),
        (b'{"instances": [1, 2', "JSON Parse error"),
        (b"[1, 2]", "Is not object"),
        (b"\xff\xfe", "JSON Parse error"),
        (b"[" * 100_000, "JSON Parse error"),
        (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "JSON Parse error"),
    ],
)
def test_load_document_rejects_what_is_not_a_json_object(body, message):
    with invalid(message) as error:
        tensor_json.load_document(body)
    assert error.value.code == status.Code.INVALID_ARGUMENT
    assert error.value.http_status == 400


def test_signature_name_must_be_a_string():
    assert tensor_json.signature_name({}) == ""
    assert tensor_json.signature_name({"signature_name": "classify"}) == "classify"
    with invalid("'signature_name' key must be a string value"):
        tensor_json.signature_name({"signature_name": 3})


# -- row format ----------------------------------------------------------------------------


def test_row_format_single_input_scalars_and_nested_lists():
    scalars = parse({"instances": ["foo", "bar", "baz"]}, {"s": "DT_STRING"})
    assert scalars.format == tensor_json.ROW
    assert scalars.tensors["s"].tolist() == [b"foo", b"bar", b"baz"]

    matrices = parse({"instances": [[[1, 2]], [[3, 4]]]}, {"m": "DT_INT64"})
    assert matrices.tensors["m"].shape == (2, 1, 2)
    assert matrices.tensors["m"].dtype == np.int64
    assert matrices.tensors["m"].tolist() == [[[1, 2]], [[3, 4]]]


def test_row_format_named_inputs_from_the_api_document():
    document = {
        "instances": [
            {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
            {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
        ]
    }
    tensors = parse(document, NAMED).tensors
    assert tensors["tag"].tolist() == [b"foo", b"bar"]
    assert tensors["signal"].dtype == np.int32 and tensors["signal"].shape == (2, 5)
    assert tensors["sensor"].dtype == np.float32 and tensors["sensor"].shape == (2, 2, 2)
    assert tensors["sensor"][1].tolist() == [[4.0, 5.0], [6.0, 8.0]]


def test_b64_values_decode_to_bytes_in_both_formats():
    data = bytes(range(256))
    encoded = {"b64": base64.b64encode(data).decode()}
    row = parse({"instances": [encoded, encoded]}, {"image_bytes": "DT_STRING"})
    assert row.tensors["image_bytes"].tolist() == [data, data]
    columnar = parse({"inputs": encoded}, {"image_bytes": "DT_STRING"})
    assert columnar.tensors["image_bytes"].shape == ()
    assert columnar.tensors["image_bytes"].item() == data


def test_b64_padding_is_optional():
    assert tensor_json.decode_base64_object({"b64": "eCE"}) == b"x!"


def test_b64_whitespace_is_skipped_as_abseil_does():
    data = bytes(range(200))
    assert tensor_json.decode_base64_object({"b64": base64.encodebytes(data).decode()}) == data
    assert tensor_json.decode_base64_object({"b64": " eC\tE=\r\n"}) == b"x!"


@pytest.mark.parametrize(
    "value, message",
    [
        ({"b64": "!!not base64!!"}, "Unable to base64 decode"),
        ({"b64": "eCE=", "extra": 1}, "not formatted correctly for base64 data"),
        ({"b64": 12}, "not formatted correctly for base64 data"),
    ],
)
def test_bad_b64_objects(value, message):
    with invalid(message):
        parse({"inputs": [value]}, {"s": "DT_STRING"})


@pytest.mark.parametrize(
    "document, dtypes, message",
    [
        (
            {"instances": [1.0, 2.0]},
            NAMED,
            "instances is a plain list, but expecting list of objects",
        ),
        (
            {"instances": [{"x": 1.0}, 2.0]},
            FLOAT,
            "Expecting object but got list at item 1 of input list",
        ),
        ({"instances": [1.0, {"x": 2.0}]}, FLOAT, "Expecting value/list but got object at item 1"),
        (
            {"instances": [{"x": 1.0, "y": 2.0}]},
            FLOAT,
            "Failed to process element: 0 key: y of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON object: does not have named input: y",
        ),
        (
            {"instances": [{"tag": "a", "signal": [1]}]},
            NAMED,
            "Failed to process element: 0 of 'instances' list. JSON object: .* keys must be "
            "equal to: sensor,signal,tag",
        ),
        ({"instances": [[1.0, 2.0], [3.0]]}, FLOAT, "Expecting tensor size: 2 but got: 1"),
        (
            {"instances": [[[1.0, 2.0]], [[3.0], [4.0]]]},
            FLOAT,
            r"Expecting shape \[1,2\] but got: \[2,1\]",
        ),
        ({"instances": "not a list"}, FLOAT, "Excepting 'instances' to be an list/array"),
        ({"instances": []}, FLOAT, "No values in 'instances' array"),
        (
            {"instances": [1.0], "inputs": [1.0]},
            FLOAT,
            "expecting only one of 'inputs' or 'instances'",
        ),
        ({"examples": [1.0]}, FLOAT, "Missing 'inputs' or 'instances' key"),
    ],
)
def test_row_format_errors_match_tf_serving(document, dtypes, message):
    with invalid(message):
        parse(document, dtypes)


# -- columnar format -----------------------------------------------------------------------


def test_columnar_inputs_need_not_share_the_batch_dimension():
    document = {
        "inputs": {
            "tag": ["foo", "bar", "baz"],
            "signal": [[1, 2, 3, 4, 5]],
            "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]],
        }
    }
    parsed = parse(document, NAMED)
    assert parsed.format == tensor_json.COLUMNAR
    assert parsed.tensors["tag"].shape == (3,)
    assert parsed.tensors["signal"].shape == (1, 5)
    assert parsed.tensors["sensor"].shape == (2, 2, 2)


def test_columnar_extra_keys_are_ignored_and_missing_ones_named():
    parsed = parse({"inputs": {"x": [1.5], "unused": 3}}, FLOAT)
    assert list(parsed.tensors) == ["x"]
    with invalid("Missing named input: signal in 'inputs' object."):
        parse({"inputs": {"tag": ["a"], "sensor": [1.0]}}, NAMED)
    with invalid("inputs is a plain value/list, but expecting an object"):
        parse({"inputs": [1, 2]}, NAMED)


# -- value types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, dtype, message",
    [
        ("1.0", "DT_FLOAT", r'JSON Value: "1.0" Type: String is not of expected type: float'),
        (True, "DT_FLOAT", "JSON Value: true Type: True is not of expected type: float"),
        (1.5, "DT_INT32", "JSON Value: 1.5 Type: Number is not of expected type: int32"),
        (2**31, "DT_INT32", "is not of expected type: int32"),
        (-1, "DT_UINT32", "is not of expected type: uint32"),
        (1, "DT_BOOL", "JSON Value: 1 Type: Number is not of expected type: bool"),
        (None, "DT_STRING", "JSON Value: null Type: Null is not of expected type: string"),
        (
            2**24 + 1,
            "DT_FLOAT",
            "Cannot convert JSON value: 16777217 to float without loss of precision",
        ),
        (1e39, "DT_FLOAT", "to float without loss of precision"),
        (
            [[1.0], 2.0],
            "DT_FLOAT",
            "found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
        ),
        ([1.0, [2.0]], "DT_FLOAT", "Encountered list at unexpected level: 1 expected < 1"),
        (
            [[1.0, 2.0], [3.0]],
            "DT_FLOAT",
            "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
        ),
        (1.0, "DT_COMPLEX64", "Conversion of JSON Value: 1.0 to type: complex64"),
    ],
)
def test_values_must_fit_the_dtype(value, dtype, message):
    with invalid(message):
        tensor_json.to_tensor(value, dtype)


def test_dtypes_are_kept():
    assert tensor_json.to_tensor([True, False], "DT_BOOL").dtype == np.bool_
    assert tensor_json.to_tensor([1, 2], "DT_FLOAT").dtype == np.float32
    assert tensor_json.to_tensor([1, 2.5], "DT_DOUBLE").tolist() == [1.0, 2.5]
    assert tensor_json.to_tensor([2**40], "DT_INT64").tolist() == [2**40]
    assert tensor_json.to_tensor([255], "DT_UINT8").dtype == np.uint8
    assert tensor_json.to_tensor("héllo", "DT_STRING").item() == "héllo".encode()
    assert np.isnan(tensor_json.to_tensor([float("nan")], "DT_FLOAT")[0])


def test_errors_quote_long_values_shortened():
    with invalid(r"\.\.\.") as error:
        tensor_json.to_tensor(["x" * 10_000], "DT_FLOAT")
    assert len(error.value.message) < 400


# -- responses -----------------------------------------------------------------------------


def test_row_response_single_output_is_unnamed():
    body = tensor_json.predict_response({"y": np.array([3.5, 4.0], np.float32)}, tensor_json.ROW)
    assert orjson.loads(body) == {"predictions": [3.5, 4.0]}


def test_row_response_several_outputs_are_objects_and_bytes_are_b64():
    outputs = {
        "total": np.array([0.2, 1.0], np.float32),
        "tag_bytes": np.array([b"\x00\xff", b"ok"], object),
        "label": np.array([b"happy", b"sad"], object),
        "positive": np.array([True, False]),
        "count": np.array([[1, 2], [3, 4]], np.int64),
    }
    document = orjson.loads(tensor_json.predict_response(outputs, tensor_json.ROW))
    assert document["predictions"][0] == {
        "total": 0.2,
        "tag_bytes": {"b64": base64.b64encode(b"\x00\xff").decode()},
        "label": "happy",
        "positive": True,
        "count": [1, 2],
    }
    assert document["predictions"][1]["label"] == "sad"


def test_columnar_response():
    outputs = {"a": np.array([[1.5]], np.float32), "b": np.array(7, np.int32)}
    assert orjson.loads(tensor_json.predict_response(outputs, tensor_json.COLUMNAR)) == {
        "outputs": {"a": [[1.5]], "b": 7}
    }
    single = tensor_json.predict_response({"a": np.array([1], np.int64)}, tensor_json.COLUMNAR)
    assert orjson.loads(single) == {"outputs": [1]}


def test_float32_outputs_are_written_at_float32_precision():
    body = tensor_json.predict_response({"y": np.array([0.1], np.float32)}, tensor_json.ROW)
    assert body == b'{"predictions":[0.1]}'


def test_non_finite_outputs_are_written_as_tokens():
    outputs = {"y": np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)}
    body = tensor_json.predict_response(outputs, tensor_json.ROW)
    assert body == b'{"predictions":[NaN,Infinity,-Infinity,0.5]}'
    assert json.loads(body)["predictions"][3] == 0.5


def test_row_response_errors():
    with invalid("has no shape information"):
        tensor_json.predict_response({"mean": np.float32(1.0)}, tensor_json.ROW)
    with invalid("Tensor name: b has inconsistent batch size: 3 expecting: 2"):
        tensor_json.predict_response(
            {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}, tensor_json.ROW
        )
    with invalid("Cannot convert empty tensor map to JSON"):
        tensor_json.predict_response({}, tensor_json.ROW)


def test_classify_and_regress_responses_use_results():
    classify = tensor_json.classify_response([["happy", "sad"]], [[0.75, 0.25]])
    assert orjson.loads(classify) == {"results": [[["happy", 0.75], ["sad", 0.25]]]}
    assert orjson.loads(tensor_json.regress_response([3.5, 4.0])) == {"results": [3.5, 4.0]}


def test_error_body_is_tf_serving_shaped():
    assert orjson.loads(tensor_json.error_body('bad "thing"')) == {"error": 'bad "thing"'}


# -- classify / regress examples -----------------------------------------------------------


def test_examples_follow_tf_serving_feature_rules():
    document = {
        "context": {"shared": "ctx", "x": 0.0},
        "examples": [
            {"x": 1.5, "ids": [1, 2], "flag": True, "image": {"b64": "eCE="}},
            {"x": [2.5, 3.5], "caption": "seaside"},
        ],
    }
    first, second = (
        example_pb2.Example.FromString(data) for data in tensor_json.parse_examples(document)
    )
    features = first.features.feature
    assert list(features["x"].float_list.value) == [1.5]  # the example wins over the context
    assert features["shared"].bytes_list.value == [b"ctx"]
    assert list(features["ids"].int64_list.value) == [1, 2]
    assert list(features["flag"].int64_list.value) == [1]
    assert features["image"].bytes_list.value == [b"x!"]
    assert second.features.feature["caption"].bytes_list.value == [b"seaside"]


@pytest.mark.parametrize(
    "document, message",
    [
        ({"instances": []}, "When method is classify, key 'examples' is expected"),
        ({"examples": {}}, "Expecting 'examples' value to be an list/array"),
        ({"examples": []}, "'examples' value is an empty array"),
        ({"examples": [1]}, "Example must be JSON object but got JSON Number"),
        (
            {"examples": [{"x": [1.5, 2]}]},
            "Unexpected element type in feature: x expecting type: float",
        ),
        ({"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
        ({"examples": [{"x": [[1]]}]}, "Feature: x has element with unexpected JSON type: Array"),
        ({"examples": [{"x": 2**63}]}, "Feature: x has uint64 element. Only int64 is supported."),
    ],
)
def test_example_errors(document, message):
    with invalid(message):
        tensor_json.parse_examples(document)
