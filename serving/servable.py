"""One loaded SavedModel version: its SignatureDefs, as TF Serving reads them, and how to run them.

Signatures come from the `serve` MetaGraph of `saved_model.pb`, exactly what TF Serving's
metadata API returns (method names included, which is how `:classify` and `:regress` find
their signatures); the functions come from `tf.saved_model.load`, so any SavedModel works:
TF2 `tf.function` signatures, Keras exports, or TF1 graphs built with SavedModelBuilder.
"""

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from serving import status

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
# The tensor keys classification and regression signatures use (signature_constants).
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def is_saved_model_dir(path: str) -> bool:
    """Whether `path` holds a SavedModel (its saved_model.pb or .pbtxt is there)."""
    return any(tf.io.gfile.exists(os.path.join(path, name)) for name in SAVED_MODEL_FILES)


def read_signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the SavedModel's `serve` MetaGraph."""
    saved_model = saved_model_pb2.SavedModel()
    binary_path = os.path.join(path, "saved_model.pb")
    if tf.io.gfile.exists(binary_path):
        with tf.io.gfile.GFile(binary_path, "rb") as file:
            saved_model.ParseFromString(file.read())
    else:
        from google.protobuf import text_format

        with tf.io.gfile.GFile(os.path.join(path, "saved_model.pbtxt"), "r") as file:
            text_format.Parse(file.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{path} has no MetaGraph tagged {SERVE_TAG!r}")


class Servable:
    """A SavedModel version ready to answer predict, classify and regress calls.

    Calls are thread-safe: TensorFlow runs them concurrently and releases the GIL while it
    computes, which is what lets the server overlap requests and batches.
    """

    def __init__(self, model_name: str, version: int, path: str):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.signature_defs = read_signature_defs(path)
        self._loaded = tf.saved_model.load(path, tags=[SERVE_TAG])
        self._functions = dict(self._loaded.signatures)
        self._metadata: dict | None = None

    # -- signatures ----------------------------------------------------------------------

    def input_dtypes(self, signature_name: str) -> dict[str, str]:
        """Input key → DT_* dtype name of a signature ("" means serving_default)."""
        signature = self._signature_for_predict(signature_name)
        return {key: _dtype_name(info.dtype) for key, info in signature.inputs.items()}

    def batchable(self, signature_name: str) -> bool:
        """Whether every input and output has a free first (batch) dimension.

        Only then can requests be concatenated into one call and the outputs split back.
        """
        signature = self.signature_defs.get(signature_name or DEFAULT_SIGNATURE)
        if signature is None or not signature.inputs or not signature.outputs:
            return False
        infos = list(signature.inputs.values()) + list(signature.outputs.values())
        return all(
            not info.tensor_shape.unknown_rank
            and len(info.tensor_shape.dim) >= 1
            and info.tensor_shape.dim[0].size == -1
            for info in infos
        )

    def _signature_for_predict(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
        name = signature_name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(name)
        if signature is None:
            raise status.invalid_argument(
                f'Serving signature name: "{name}" not found in signature def'
            )
        return signature

    def _function(self, name: str):
        function = self._functions.get(name)
        if function is None:
            raise status.failed_precondition(f'Serving signature key "{name}" not found.')
        return function

    # -- calls ---------------------------------------------------------------------------

    def predict(
        self, signature_name: str, tensors: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Runs a signature on input tensors; returns every output, by key.

        Raises:
          status.ServingError: unknown signature, missing or extra inputs, incompatible
            shapes, or the model's own failure (a corrupt image is INVALID_ARGUMENT).
        """
        name = signature_name or DEFAULT_SIGNATURE
        signature = self._signature_for_predict(name)
        _check_input_keys(signature, tensors)
        arguments = {
            key: _to_tensor(key, tensors[key], signature.inputs[key]) for key in signature.inputs
        }
        try:
            outputs = self._function(name)(**arguments)
        except status.ServingError:
            raise
        except Exception as error:  # the model's own errors, mapped to their canonical code
            raise status.from_exception(error) from None
        return {key: value.numpy() for key, value in outputs.items()}

    def classify(
        self, signature_name: str, serialized_examples: Sequence[bytes]
    ) -> tuple[list[list[str]], list[list[float]]]:
        """Labels and scores per example, from a tensorflow/serving/classify signature."""
        name = signature_name or DEFAULT_SIGNATURE
        signature = self._signature_with_method(name, CLASSIFY_METHOD, "classification")
        if len(signature.inputs) != 1:
            raise status.invalid_argument("Expected one input Tensor.")
        if len(signature.outputs) not in (1, 2):
            raise status.invalid_argument(
                f"Expected one or two output Tensors, found {len(signature.outputs)}"
            )
        if CLASSIFY_INPUTS not in signature.inputs:
            raise status.invalid_argument("No classification inputs found in SignatureDef")
        has_classes = CLASSIFY_OUTPUT_CLASSES in signature.outputs
        has_scores = CLASSIFY_OUTPUT_SCORES in signature.outputs
        if not has_classes and not has_scores:
            raise status.invalid_argument(
                'Expected classification signature outputs to contain at least one of "classes" '
                'or "scores".'
            )
        outputs = self.predict(name, {CLASSIFY_INPUTS: _string_array(serialized_examples)})
        count = len(serialized_examples)
        classes = outputs.get(CLASSIFY_OUTPUT_CLASSES) if has_classes else None
        scores = outputs.get(CLASSIFY_OUTPUT_SCORES) if has_scores else None
        for key, tensor in ((CLASSIFY_OUTPUT_CLASSES, classes), (CLASSIFY_OUTPUT_SCORES, scores)):
            if tensor is not None and (tensor.ndim != 2 or tensor.shape[0] != count):
                raise status.invalid_argument(
                    f"Expected {key} Tensor shape: [batch_size num_classes] for {count} "
                    f"examples but got {list(tensor.shape)}"
                )
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise status.invalid_argument(
                "Tensors class and score should match in dim_size(1). Got "
                f"{classes.shape[1]} vs. {scores.shape[1]}"
            )
        num_classes = (classes if classes is not None else scores).shape[1]
        labels = [
            [
                _label(classes[row, column]) if classes is not None else ""
                for column in range(num_classes)
            ]
            for row in range(count)
        ]
        values = [
            [
                float(scores[row, column]) if scores is not None else 0.0
                for column in range(num_classes)
            ]
            for row in range(count)
        ]
        return labels, values

    def regress(self, signature_name: str, serialized_examples: Sequence[bytes]) -> np.ndarray:
        """One float per example, from a tensorflow/serving/regress signature."""
        name = signature_name or DEFAULT_SIGNATURE
        signature = self._signature_with_method(name, REGRESS_METHOD, "regression")
        if len(signature.inputs) != 1:
            raise status.invalid_argument("Expected one input Tensor.")
        if len(signature.outputs) != 1:
            raise status.invalid_argument("Expected one output Tensor.")
        if REGRESS_INPUTS not in signature.inputs:
            raise status.failed_precondition("No regression inputs found in SignatureDef")
        if REGRESS_OUTPUTS not in signature.outputs:
            raise status.invalid_argument("No regression outputs found in SignatureDef")
        outputs = self.predict(name, {REGRESS_INPUTS: _string_array(serialized_examples)})
        values = outputs[REGRESS_OUTPUTS]
        count = len(serialized_examples)
        if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
            raise status.invalid_argument(
                "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                f"but got {list(values.shape)}"
            )
        if values.shape[0] != count:
            raise status.invalid_argument(
                f"Input batch size did not match output batch size: {count} vs. {values.shape[0]}"
            )
        return values.reshape(-1).astype(np.float32)

    def _signature_with_method(
        self, name: str, method: str, kind: str
    ) -> meta_graph_pb2.SignatureDef:
        signature = self.signature_defs.get(name)
        if signature is None:
            raise status.invalid_argument(f"No signature was found with the name: {name}")
        if signature.method_name != method:
            raise status.invalid_argument(
                f"Expected {kind} signature method_name to be {method}. "
                f"Was: {signature.method_name}"
            )
        return signature

    # -- metadata and warm-up ------------------------------------------------------------

    def metadata(self) -> dict:
        """GetModelMetadataResponse as TF Serving's REST API writes it (computed once)."""
        if self._metadata is None:
            self._metadata = self._build_metadata()
        return self._metadata

    def _build_metadata(self) -> dict:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in self.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        return {
            "model_spec": {
                "name": self.model_name,
                "signature_name": "",
                "version": str(self.version),
            },
            "metadata": {
                "signature_def": json_format.MessageToDict(
                    signature_map,
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                )
            },
        }

    def warm_up(self, logs: Sequence[prediction_log_pb2.PredictionLog]) -> int:
        """Replays warm-up PredictionLogs, as TF Serving does before a version is AVAILABLE.

        Returns the number of requests replayed. Raises status.ServingError when one fails:
        TF Serving then refuses to load the version, and so does the model manager.
        """
        replayed = 0
        for log in logs:
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                request = log.predict_log.request
                tensors = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
                self.predict(request.model_spec.signature_name, tensors)
            elif kind == "classify_log":
                request = log.classify_log.request
                self.classify(
                    request.model_spec.signature_name, _serialized_examples(request.input)
                )
            elif kind == "regress_log":
                request = log.regress_log.request
                self.regress(request.model_spec.signature_name, _serialized_examples(request.input))
            else:
                logging.getLogger(__name__).warning(
                    "Skipping a %s warm-up record of %s: only predict, classify and regress "
                    "logs are replayed",
                    kind,
                    self.path,
                )
                continue
            replayed += 1
        return replayed


def _dtype_name(enum_value: int) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(enum_value)


def _check_input_keys(signature: meta_graph_pb2.SignatureDef, tensors: Mapping) -> None:
    expected, sent = set(signature.inputs), set(tensors)
    if expected != sent:
        raise status.invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
        )


def _to_tensor(key: str, value: np.ndarray, info) -> tf.Tensor:
    dtype = tf.dtypes.as_dtype(info.dtype)
    array = np.asarray(value)
    if not info.tensor_shape.unknown_rank:
        expected = [dim.size for dim in info.tensor_shape.dim]
        compatible = len(expected) == array.ndim and all(
            want in (-1, got) for want, got in zip(expected, array.shape, strict=True)
        )
        if not compatible:
            raise status.invalid_argument(
                f"input tensor {key} has shape {list(array.shape)}, which does not match "
                f"the signature's {expected} (-1 is any size)"
            )
    try:
        return tf.convert_to_tensor(array, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise status.invalid_argument(
            f"input tensor {key} cannot be converted to {dtype.name}: {error}"
        ) from None


def _string_array(values: Sequence[bytes]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def _label(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _serialized_examples(model_input) -> list[bytes]:
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        return [example.SerializeToString() for example in model_input.example_list.examples]
    if kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        context = with_context.context.SerializeToString()
        return [context + example.SerializeToString() for example in with_context.examples]
    raise status.invalid_argument("Input is empty: it has no examples")
