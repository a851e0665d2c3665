"""TF Serving's JSON encoding of tensors and examples, read and written as its json_tensor.cc does.

The rules and the error messages follow tensorflow_serving/util/json_tensor.cc, so a client
written against TensorFlow Serving sees the same answers here:

- `instances` (row format): a list with one item per batch element; items are objects keyed
  by input name when the signature has several inputs. `inputs` (columnar format): one value,
  or an object keyed by input name; inputs need not share their first dimension.
- Binary strings travel as `{"b64": "..."}`; outputs whose name ends in `_bytes` are written
  that way. NaN and ±Infinity are accepted and written as bare tokens.
- Responses use `predictions` (row) or `outputs` (columnar); one output is written without
  its name. `:classify` and `:regress` answer with `results`.
"""

import base64
import binascii
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from serving import status

ROW = "row"
COLUMNAR = "columnar"

SIGNATURE_KEY = "signature_name"
INSTANCES_KEY = "instances"
INPUTS_KEY = "inputs"
CONTEXT_KEY = "context"
EXAMPLES_KEY = "examples"
PREDICTIONS_KEY = "predictions"
OUTPUTS_KEY = "outputs"
RESULTS_KEY = "results"
BASE64_KEY = "b64"
BYTES_SUFFIX = "_bytes"

# Values quoted back in error messages are cut here, so an error never echoes a whole image.
MAX_QUOTED_CHARS = 256
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT64_MAX = float(np.finfo(np.float64).max)
INT32_RANGE = (-(2**31), 2**31 - 1)
INT64_RANGE = (-(2**63), 2**63 - 1)
# ASCII whitespace, deleted from base64 text before decoding.
_WHITESPACE = str.maketrans("", "", " \t\n\v\f\r")


@dataclasses.dataclass(frozen=True)
class _DType:
    """How JSON values become one TensorFlow dtype."""

    name: str  # as DataTypeString() spells it: "float", "int64", "string"...
    numpy: Any
    kind: str  # "float", "int", "bool" or "string"
    int_range: tuple[int, int] = (0, 0)
    exact_int_limit: int = 0  # largest integer the float type holds exactly
    float_max: float = 0.0


DTYPES = {
    "DT_FLOAT": _DType(
        "float", np.float32, "float", exact_int_limit=2**24 - 1, float_max=FLOAT32_MAX
    ),
    "DT_DOUBLE": _DType(
        "double", np.float64, "float", exact_int_limit=2**53 - 1, float_max=FLOAT64_MAX
    ),
    "DT_INT8": _DType("int8", np.int8, "int", INT32_RANGE),
    "DT_INT16": _DType("int16", np.int16, "int", INT32_RANGE),
    "DT_INT32": _DType("int32", np.int32, "int", INT32_RANGE),
    "DT_UINT8": _DType("uint8", np.uint8, "int", INT32_RANGE),
    "DT_INT64": _DType("int64", np.int64, "int", INT64_RANGE),
    "DT_UINT32": _DType("uint32", np.uint32, "int", (0, 2**32 - 1)),
    "DT_UINT64": _DType("uint64", np.uint64, "int", (0, 2**64 - 1)),
    "DT_BOOL": _DType("bool", np.bool_, "bool"),
    "DT_STRING": _DType("string", object, "string"),
}


@dataclasses.dataclass(frozen=True)
class PredictInputs:
    """The tensors of a :predict request and the format its response must use."""

    signature_name: str  # "" when the request names none (the default signature)
    tensors: dict[str, np.ndarray]
    format: str  # ROW or COLUMNAR


# ---------------------------------------------------------------------------------------------
# Reading


def load_document(body: bytes) -> dict:
    """Parses a request body, which must be a JSON object; NaN and Infinity are accepted."""
    if not body:
        raise status.invalid_argument("JSON Parse error: The document is empty")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as strict_error:
        # orjson is strict; TF Serving (rapidjson with kParseNanAndInfFlag) also takes
        # NaN, Infinity and -Infinity, which the standard library parser understands.
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: nesting deeper than Python's limit ("[" * 100000), which
            # orjson refused first for the same reason.
            raise status.invalid_argument(f"JSON Parse error: {strict_error}") from None
    if not isinstance(document, dict):
        raise status.invalid_argument(f"JSON Value: {quote(document)} Is not object")
    return document


def signature_name(document: Mapping[str, Any]) -> str:
    """The request's optional `signature_name` ("" when absent)."""
    name = document.get(SIGNATURE_KEY, "")
    if not isinstance(name, str):
        raise status.invalid_argument(
            f"JSON Value: {quote(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


def parse_predict_inputs(
    document: Mapping[str, Any], input_dtypes: Mapping[str, str]
) -> PredictInputs:
    """The input tensors of a :predict request, for a signature's inputs (name → DT_* name).

    Raises:
      status.ServingError: INVALID_ARGUMENT, with TF Serving's message, for anything that
        does not fit the signature.
    """
    if not input_dtypes:
        raise status.invalid_argument(
            f"Failed to get input map for signature: {signature_name(document) or 'DEFAULT'}"
        )
    has_instances = INSTANCES_KEY in document
    has_inputs = INPUTS_KEY in document
    if has_instances and has_inputs:
        raise status.invalid_argument(
            f"JSON Value: {quote(document)} Not formatted correctly expecting only one of "
            f"'{INPUTS_KEY}' or '{INSTANCES_KEY}' keys to exist "
        )
    if has_instances:
        instances = document[INSTANCES_KEY]
        if not isinstance(instances, list):
            raise status.invalid_argument(
                f"JSON Value: {quote(document)} Excepting '{INSTANCES_KEY}' to be an list/array"
            )
        if not instances:
            raise status.invalid_argument(
                f"JSON Value: {quote(document)} No values in '{INSTANCES_KEY}' array"
            )
        tensors = _tensors_from_instances(instances, input_dtypes)
        return PredictInputs(signature_name(document), tensors, ROW)
    if has_inputs:
        tensors = _tensors_from_inputs(document[INPUTS_KEY], input_dtypes)
        return PredictInputs(signature_name(document), tensors, COLUMNAR)
    raise status.invalid_argument("Missing 'inputs' or 'instances' key")


def _tensors_from_instances(
    instances: list, input_dtypes: Mapping[str, str]
) -> dict[str, np.ndarray]:
    if not isinstance(instances[0], dict) and len(input_dtypes) > 1:
        raise status.invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    elements_are_objects = _is_named_object(instances[0])
    input_names = sorted(input_dtypes)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in input_names}
    for index, element in enumerate(instances):
        if elements_are_objects:
            if not _is_named_object(element):
                raise status.invalid_argument(
                    f"Expecting object but got list at item {index} of input list"
                )
            for name, value in element.items():
                try:
                    _add_instance_item(value, name, input_dtypes, rows)
                except status.ServingError as error:
                    raise status.invalid_argument(
                        f"Failed to process element: {index} key: {name} of 'instances' list. "
                        f"Error: INVALID_ARGUMENT: {error.message}"
                    ) from None
            if sorted(element) != input_names:
                raise status.invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{quote(element)} keys must be equal to: {','.join(input_names)}"
                )
        else:
            if _is_named_object(element):
                raise status.invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
            try:
                _add_instance_item(element, input_names[0], input_dtypes, rows)
            except status.ServingError as error:
                raise status.invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. "
                    f"Error: INVALID_ARGUMENT: {error.message}"
                ) from None
    return {name: _stack(items, input_dtypes[name]) for name, items in rows.items() if items}


def _add_instance_item(
    value: Any, name: str, input_dtypes: Mapping[str, str], rows: dict[str, list]
) -> None:
    if name not in input_dtypes:
        raise status.invalid_argument(f"JSON object: does not have named input: {name}")
    tensor = to_tensor(value, input_dtypes[name])
    items = rows[name]
    if items:
        expected = items[0]
        if expected.size != tensor.size:
            raise status.invalid_argument(
                f"Expecting tensor size: {expected.size} but got: {tensor.size}"
            )
        if expected.shape != tensor.shape:
            raise status.invalid_argument(
                f"Expecting shape {_shape_text(expected.shape)} but got: "
                f"{_shape_text(tensor.shape)}"
            )
    items.append(tensor)


def _stack(items: list[np.ndarray], dtype_name: str) -> np.ndarray:
    stacked = np.stack(items)
    return stacked.astype(DTYPES[dtype_name].numpy, copy=False)


def _tensors_from_inputs(value: Any, input_dtypes: Mapping[str, str]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_base64_object(value):
        if len(input_dtypes) > 1:
            raise status.invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        name = next(iter(input_dtypes))
        return {name: to_tensor(value, input_dtypes[name])}
    tensors = {}
    for name in sorted(input_dtypes):
        if name not in value:
            raise status.invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = to_tensor(value[name], input_dtypes[name])
    return tensors


def to_tensor(value: Any, dtype_name: str) -> np.ndarray:
    """One JSON value (a scalar or dense nested lists) as an array of a TF dtype (DT_* name)."""
    dtype = DTYPES.get(dtype_name)
    if dtype is None:
        readable = dtype_name.removeprefix("DT_").lower()
        raise status.ServingError(
            status.Code.UNIMPLEMENTED,
            f"Conversion of JSON Value: {quote(value)} to type: {readable}",
        )
    shape = _dense_shape(value)
    if dtype.kind == "string":
        leaves: list[bytes] = []
        _check_level(value, 0, shape, dtype, leaves)
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    _check_level(value, 0, shape, dtype, None)
    if dtype.kind == "float":
        array = np.array(value, dtype=np.float64)
        if dtype.numpy is np.float32:
            _check_float32_range(array)
        return array.astype(dtype.numpy, copy=False)
    return np.array(value, dtype=dtype.numpy)


def _dense_shape(value: Any) -> tuple[int, ...]:
    """The shape implied by the first element at each level (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _check_level(
    value: Any, level: int, shape: tuple[int, ...], dtype: _DType, leaves: list | None
) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise status.invalid_argument(
                f"JSON Value: {quote(value)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {rank}"
            )
        _check_leaf(value, dtype, leaves)
        return
    if level >= rank:
        raise status.invalid_argument(
            f"Encountered list at unexpected level: {level} expected < {rank}"
        )
    if len(value) != shape[level]:
        raise status.invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    if level == rank - 1 and leaves is None and _leaves_fit(value, dtype):
        return  # the innermost list of a numeric tensor, checked in bulk
    for item in value:
        _check_level(item, level + 1, shape, dtype, leaves)


def _leaves_fit(values: list, dtype: _DType) -> bool:
    """Whether a list of numbers or bools fits `dtype`, checked at C speed (no list inside)."""
    types = set(map(type, values))
    if dtype.kind == "bool":
        return types <= {bool}
    if dtype.kind == "float":
        if not types <= {int, float}:
            return False
        if int in types:
            return all(abs(v) <= dtype.exact_int_limit for v in values if type(v) is int)
        return True
    if dtype.kind == "int":
        low, high = dtype.int_range
        return types <= {int} and (not values or (low <= min(values) and max(values) <= high))
    return False


def _check_leaf(value: Any, dtype: _DType, leaves: list | None) -> None:
    if dtype.kind == "string":
        if isinstance(value, dict):
            leaves.append(decode_base64_object(value))
        elif isinstance(value, str):
            leaves.append(value.encode("utf-8"))
        else:
            raise _type_error(value, dtype)
        return
    if isinstance(value, bool):
        if dtype.kind != "bool":
            raise _type_error(value, dtype)
        return
    if dtype.kind == "bool" or not isinstance(value, int | float):
        raise _type_error(value, dtype)
    if dtype.kind == "int":
        low, high = dtype.int_range
        if not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return
    if isinstance(value, int) and abs(value) > dtype.exact_int_limit:
        raise status.invalid_argument(
            f"Cannot convert JSON value: {quote(value)} to {dtype.name} without loss of precision."
        )


def _check_float32_range(array: np.ndarray) -> None:
    finite = np.isfinite(array)
    too_large = finite & (np.abs(array) > FLOAT32_MAX)
    if too_large.any():
        value = array[too_large].flat[0]
        raise status.invalid_argument(
            f"Cannot convert JSON value: {value!r} to float without loss of precision."
        )


def _type_error(value: Any, dtype: _DType) -> status.ServingError:
    return status.invalid_argument(
        f"JSON Value: {quote(value)} Type: {json_type(value)} is not of expected type: {dtype.name}"
    )


def _is_base64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BASE64_KEY), str)


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_base64_object(value)


def decode_base64_object(value: Any) -> bytes:
    """The bytes of a `{"b64": "..."}` object: standard alphabet, padding optional, ASCII
    whitespace ignored (what `base64.encodebytes` and `base64` without -w0 write), as
    abseil's Base64Unescape, which TF Serving uses, reads it."""
    if not _is_base64_object(value):
        raise status.invalid_argument(
            f"JSON Value: {quote(value)} not formatted correctly for base64 data"
        )
    text = value[BASE64_KEY]
    if not text.isalnum():
        text = text.translate(_WHITESPACE)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise status.invalid_argument("Unable to base64 decode") from None


def parse_examples(document: Mapping[str, Any]) -> list[bytes]:
    """The serialized tf.Example protos of a :classify or :regress request.

    A `context` is merged into every example (serialised first, so an example's own
    features win), as TF Serving does for an ExampleListWithContext.
    """
    from tensorflow.core.example import example_pb2

    context = b""
    if CONTEXT_KEY in document:
        context = _example_from_json(document[CONTEXT_KEY], example_pb2).SerializeToString()
    if EXAMPLES_KEY not in document:
        raise status.invalid_argument(
            f"JSON Value: {quote(document)} When method is classify, key '{EXAMPLES_KEY}' "
            "is expected and was not found"
        )
    examples = document[EXAMPLES_KEY]
    if not isinstance(examples, list):
        raise status.invalid_argument(
            f"JSON Value: {quote(document)} Expecting '{EXAMPLES_KEY}' value to be an list/array"
        )
    if not examples:
        raise status.invalid_argument(
            f"JSON Value: {quote(document)} '{EXAMPLES_KEY}' value is an empty array"
        )
    return [
        context + _example_from_json(example, example_pb2).SerializeToString()
        for example in examples
    ]


def _example_from_json(value: Any, example_pb2) -> Any:
    if not isinstance(value, dict):
        raise status.invalid_argument(
            f"Example must be JSON object but got JSON {json_type(value)}"
        )
    example = example_pb2.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
    return example


def _add_to_feature(value: Any, name: str, feature: Any) -> None:
    def require(kind: str) -> None:
        current = feature.WhichOneof("kind")
        if current is not None and current != kind:
            readable = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}
            raise status.invalid_argument(
                f"Unexpected element type in feature: {name} expecting type: {readable[current]}"
            )

    if isinstance(value, bool):
        require("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict) and _is_base64_object(value):
        require("bytes_list")
        feature.bytes_list.value.append(decode_base64_object(value))
    elif isinstance(value, str):
        require("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, float):
        require("float_list")
        if math.isfinite(value) and abs(value) > FLOAT32_MAX:
            raise status.invalid_argument(
                f"Cannot convert JSON value: {quote(value)} to float without loss of precision."
            )
        feature.float_list.value.append(value)
    elif isinstance(value, int):
        require("int64_list")
        if not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
            raise status.invalid_argument(
                f"Feature: {name} has uint64 element. Only int64 is supported."
            )
        feature.int64_list.value.append(value)
    else:
        raise status.invalid_argument(
            f"Feature: {name} has element with unexpected JSON type: {json_type(value)}"
        )


# ---------------------------------------------------------------------------------------------
# Writing


def predict_response(outputs: Mapping[str, np.ndarray], request_format: str) -> bytes:
    """The JSON body answering a :predict request in `request_format` (ROW or COLUMNAR)."""
    if not outputs:
        raise status.invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    values = {name: _json_ready(name, np.asarray(outputs[name])) for name in names}
    if request_format == COLUMNAR:
        body = values[names[0]] if len(names) == 1 else values
        return dumps({OUTPUTS_KEY: body})
    if request_format != ROW:
        raise status.invalid_argument("Invalid request format")
    batch_size = -1
    for name in names:
        shape = np.shape(outputs[name])
        if not shape:
            raise status.invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch_size >= 0 and shape[0] != batch_size:
            raise status.invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {shape[0]} "
                f"expecting: {batch_size}"
            )
        batch_size = shape[0]
    if len(names) == 1:
        return dumps({PREDICTIONS_KEY: values[names[0]]})
    rows = [{name: values[name][index] for name in names} for index in range(batch_size)]
    return dumps({PREDICTIONS_KEY: rows})


def classify_response(
    labels: Sequence[Sequence[bytes | str]] | None, scores: Sequence[Sequence[float]] | None
) -> bytes:
    """`{"results": [[[label, score], ...], ...]}`, one list of pairs per example.

    A signature without `classes` answers "" labels, one without `scores` 0 scores, as a
    ClassificationResult with those fields unset is written (json_tensor.cc).
    """
    rows = labels if labels is not None else scores
    results = [
        [
            [
                _label_text(labels[row][column]) if labels is not None else "",
                np.float32(scores[row][column] if scores is not None else 0.0),
            ]
            for column in range(len(rows[row]))
        ]
        for row in range(len(rows or []))
    ]
    if not results:
        raise status.invalid_argument("Cannot convert empty ClassificationResults to JSON")
    return dumps({RESULTS_KEY: results})


def _label_text(label: bytes | str) -> str:
    return label.decode("utf-8", errors="replace") if isinstance(label, bytes) else label


def regress_response(values: Sequence[float]) -> bytes:
    """`{"results": [value, ...]}`, one value per example."""
    if len(values) == 0:
        raise status.invalid_argument("Cannot convert empty RegressionResults to JSON")
    return dumps({RESULTS_KEY: np.asarray(values, dtype=np.float32)})


def error_body(message: str) -> bytes:
    """TF Serving's error object: `{"error": "<message>"}`."""
    return orjson.dumps({"error": message})


def _json_ready(name: str, array: np.ndarray) -> Any:
    """A tensor in a form orjson writes as TF Serving would (numpy for numbers)."""
    if array.dtype == object or array.dtype.kind in "SU":
        as_base64 = name.endswith(BYTES_SUFFIX)
        flat = [_string_value(item, as_base64) for item in array.reshape(-1)]
        return _nest(flat, array.shape)
    if array.dtype.kind == "f" and array.dtype.itemsize < 4 or array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    if array.dtype.kind not in "biuf":
        raise status.invalid_argument(
            f"Failed to write JSON value for tensor type: {array.dtype.name}"
        )
    if array.ndim == 0:
        return array[()]  # a numpy scalar: orjson writes a 0-d array as a list
    return np.ascontiguousarray(array)


def _string_value(item: Any, as_base64: bool) -> Any:
    data = item if isinstance(item, bytes) else str(item).encode("utf-8")
    if as_base64:
        return {BASE64_KEY: base64.b64encode(data).decode("ascii")}
    return data.decode("utf-8", errors="replace")


def _nest(flat: list, shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    for size in reversed(shape[1:]):
        flat = [flat[start : start + size] for start in range(0, len(flat), size)]
    return flat


def dumps(document: Any) -> bytes:
    """JSON bytes; non-finite floats are written as NaN/Infinity/-Infinity like TF Serving."""
    try:
        return (
            orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
            if _all_finite(document)
            else _dumps_with_non_finite(document)
        )
    except TypeError as error:
        raise status.ServingError(status.Code.INTERNAL, f"Failed to write JSON: {error}") from None


def _all_finite(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind != "f" or bool(np.isfinite(value).all())
    if isinstance(value, float | np.floating):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(_all_finite(item) for item in value)
    return True


def _dumps_with_non_finite(document: Any) -> bytes:
    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            if value.dtype.kind == "f":
                # str() of a float32 is its shortest repr; float() keeps that in float64.
                return _nest([float(str(item)) for item in value.reshape(-1)], value.shape)
            return value.tolist()
        if isinstance(value, np.generic):
            return float(str(value)) if isinstance(value, np.floating) else value.item()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    return json.dumps(plain(document), separators=(",", ":")).encode("utf-8")


def quote(value: Any) -> str:
    """A JSON value as it appears in an error message, cut to MAX_QUOTED_CHARS."""
    try:
        text = orjson.dumps(value).decode("utf-8")
    except TypeError:
        text = json.dumps(value, default=str)
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "..."
    return text


def json_type(value: Any) -> str:
    """The JSON type name TF Serving uses in messages (rapidjson's)."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"
