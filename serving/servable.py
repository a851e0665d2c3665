"""One loaded SavedModel version, run the way TensorFlow Serving runs it: a graph in a Session.

TF Serving loads the `serve` MetaGraph of `saved_model.pb` into a TensorFlow Session and runs
signatures by feeding and fetching the tensors a SignatureDef names
(tensorflow_serving/servables/tensorflow/predict_util.cc, classifier.cc, regressor.cc,
multi_inference.cc). This module does the same, so any SavedModel behaves as there: TF2
`tf.function` signatures, Keras exports and TF1 SavedModelBuilder graphs alike, with TF
Serving's checks and error messages:

- inputs are checked by name, not by shape: a tensor is fed as sent, whatever the
  signature's declared shape (the placeholders' static shapes are relaxed on load, as the
  C++ Session never checks them);
- method names are checked only with `--enable_signature_method_name_check`;
- a run has a deadline (RunOptions.timeout_in_ms) that cancels it, decoding included.

Loading uses only public TensorFlow APIs: `tf.compat.v1.train.import_meta_graph`, the
MetaGraph's Saver, and its init op fed with the asset paths (what the SavedModel loader does).
"""

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from serving import status, tensor_proto

logger = logging.getLogger(__name__)

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
# signature_constants: the tensor keys of classification and regression signatures.
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# Where TF1 and TF2 SavedModels keep their init op (loader_impl.get_init_op).
INIT_OP_SIGNATURE_KEY = "__saved_model_init_op"
INIT_OP_COLLECTIONS = ("saved_model_main_op", "legacy_init_op")
SIGNATURE_METADATA_FIELD = "signature_def"


def is_saved_model_dir(path: str) -> bool:
    """Whether `path` holds a SavedModel (its saved_model.pb or .pbtxt is there)."""
    return any(tf.io.gfile.exists(os.path.join(path, name)) for name in SAVED_MODEL_FILES)


def read_meta_graph(path: str, tags: Sequence[str] = (SERVE_TAG,)) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef of the SavedModel in `path` whose tags are exactly `tags`.

    Raises:
      status.ServingError: NOT_FOUND when no MetaGraph has those tags (TF Serving's message).
    """
    saved_model = saved_model_pb2.SavedModel()
    binary_path = os.path.join(path, "saved_model.pb")
    if tf.io.gfile.exists(binary_path):
        with tf.io.gfile.GFile(binary_path, "rb") as file:
            saved_model.ParseFromString(file.read())
    else:
        with tf.io.gfile.GFile(os.path.join(path, "saved_model.pbtxt"), "r") as file:
            text_format.Parse(file.read(), saved_model)
    wanted = set(tags)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    available = [list(meta_graph.meta_info_def.tags) for meta_graph in saved_model.meta_graphs]
    raise status.not_found(
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(wanted))} }}. "
        f"To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
        f"`saved_model_cli` (available: {available})"
    )


@dataclasses.dataclass(frozen=True)
class ServableOptions:
    """How versions are loaded and run (tensorflow_model_server's session flags)."""

    tags: tuple[str, ...] = (SERVE_TAG,)
    session_config: config_pb2.ConfigProto = dataclasses.field(
        default_factory=config_pb2.ConfigProto
    )
    method_name_check: bool = False  # --enable_signature_method_name_check


class Servable:
    """A SavedModel version in its own graph and Session, ready for predict/classify/regress.

    Calls are thread-safe: Session.run releases the GIL, so batches and requests overlap.

    Args:
      model_name, version: what requests and responses call it.
      path: the version directory (local, gs://, s3://...).
      options: tags, session config and checks.

    Raises:
      status.ServingError: the SavedModel cannot be read or has no MetaGraph with the tags;
      tf.errors.OpError: restoring variables or running the init op failed.
    """

    def __init__(
        self,
        model_name: str,
        version: int,
        path: str,
        options: ServableOptions | None = None,
    ):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.options = options or ServableOptions()
        meta_graph = read_meta_graph(path, self.options.tags)
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=self.options.session_config)
        relaxed, self._feed_names = _relax_input_shapes(meta_graph)
        _load_into_session(self._session, relaxed, path)
        self._metadata: get_model_metadata_pb2.SignatureDefMap | None = None
        self._closed = False

    def close(self) -> None:
        """Closes the session; runs still in progress are cancelled (CANCELLED)."""
        self._closed = True
        self._session.close()

    # -- running tensors -----------------------------------------------------------------

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        fetches: Sequence[str],
        timeout_seconds: float | None = None,
    ) -> list[np.ndarray]:
        """Session.run by the SignatureDefs' tensor names, with an optional deadline.

        Raises:
          status.ServingError: TensorFlow's error, with its canonical code (a run past its
            deadline is DEADLINE_EXCEEDED, a closed session UNAVAILABLE).
        """
        if self._closed:
            raise status.unavailable(status.SHUTTING_DOWN)
        options = None
        if timeout_seconds is not None:
            milliseconds = max(1, int(timeout_seconds * 1000))
            options = config_pb2.RunOptions(timeout_in_ms=milliseconds)
        feed_dict = {self._feed_names.get(name, name): value for name, value in feeds.items()}
        fetch_list = [self._feed_names.get(name, name) for name in fetches]
        try:
            return self._session.run(fetch_list, feed_dict=feed_dict, options=options)
        except Exception as error:  # the model's own errors, mapped to their canonical code
            if self._closed:  # cancelled by close(): the server is shutting down
                raise status.unavailable(status.SHUTTING_DOWN) from None
            raise status.from_exception(error) from None

    def signature(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef for a Predict call ("" is serving_default).

        Raises:
          status.ServingError: FAILED_PRECONDITION, TF Serving's message, when it is absent.
        """
        name = signature_name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(name)
        if signature is None:
            raise status.failed_precondition(f'Serving signature key "{name}" not found.')
        return signature

    def input_dtypes(self, signature_name: str) -> dict[str, str]:
        """Input alias → DT_* dtype name, for the REST API's JSON decoding.

        Raises:
          status.ServingError: INVALID_ARGUMENT when the signature is absent, with the REST
            API's message (http_rest_api_handler.cc GetInfoMap).
        """
        name = signature_name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(name)
        if signature is None:
            raise status.invalid_argument(
                f'Serving signature name: "{name}" not found in signature def'
            )
        return {key: types_pb2.DataType.Name(info.dtype) for key, info in signature.inputs.items()}

    def batchable(self, signature_name: str) -> bool:
        """Whether every input and output of the signature has a free first (batch) dimension."""
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

    # -- the PredictionService calls -----------------------------------------------------

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        timeout_seconds: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs a signature on input tensors (by alias); returns the outputs asked for.

        Inputs are checked by name and dtype only (predict_util.cc); an empty
        `output_filter` fetches every output.

        Raises:
          status.ServingError: unknown signature (FAILED_PRECONDITION), missing or extra
            inputs, unknown or repeated output aliases, a dtype that differs from the
            signature's (INVALID_ARGUMENT), or the model's own failure.
        """
        signature = self.signature(signature_name)
        if self.options.method_name_check and signature.method_name not in (
            PREDICT_METHOD,
            CLASSIFY_METHOD,
            REGRESS_METHOD,
        ):
            raise status.ServingError(
                status.Code.INTERNAL,
                f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
                f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}",
            )
        _check_input_keys(signature, inputs)
        aliases = _output_aliases(signature, output_filter)
        feeds = {}
        for index, (alias, value) in enumerate(sorted(inputs.items())):
            info = signature.inputs[alias]
            feeds[info.name] = _checked_input(index, value, info.dtype)
        fetches = [signature.outputs[alias].name for alias in aliases]
        values = self.run(feeds, fetches, timeout_seconds)
        return dict(zip(aliases, values, strict=True))

    def classify(
        self,
        signature_name: str,
        serialized_examples: Sequence[bytes],
        timeout_seconds: float | None = None,
    ) -> tuple[list[list[bytes]] | None, list[list[float]] | None]:
        """Labels and scores per example (classifier.cc); either may be None when absent.

        Raises:
          status.ServingError: INVALID_ARGUMENT with TF Serving's message for a signature
            that does not fit, or the model's own failure.
        """
        name = signature_name or DEFAULT_SIGNATURE
        signature = self._lookup(name)
        self._check_method(signature, CLASSIFY_METHOD, "classification")
        input_name, output_names = check_classification_signature(signature)
        values = self.run(
            {input_name: _string_array(serialized_examples)}, output_names, timeout_seconds
        )
        outputs = dict(zip(output_names, values, strict=True))
        return classification_results(signature, len(serialized_examples), outputs)

    def regress(
        self,
        signature_name: str,
        serialized_examples: Sequence[bytes],
        timeout_seconds: float | None = None,
    ) -> np.ndarray:
        """One float per example (regressor.cc), float32 [n].

        Raises:
          status.ServingError: INVALID_ARGUMENT (or FAILED_PRECONDITION) with TF Serving's
            message for a signature that does not fit, or the model's own failure.
        """
        name = signature_name or DEFAULT_SIGNATURE
        signature = self._lookup(name)
        self._check_method(signature, REGRESS_METHOD, "regression")
        input_name, output_name = check_regression_signature(signature)
        (values,) = self.run(
            {input_name: _string_array(serialized_examples)}, [output_name], timeout_seconds
        )
        return regression_results(len(serialized_examples), values)

    def multi_inference(
        self,
        tasks: Sequence[tuple[str, str]],
        serialized_examples: Sequence[bytes],
        timeout_seconds: float | None = None,
    ) -> list[tuple[str, object]]:
        """Classify and regress tasks on the same examples in one run (multi_inference.cc).

        Args:
          tasks: (signature name, method name) pairs.

        Returns:
          Per task, ("classification", (labels, scores)) or ("regression", values).

        Raises:
          status.ServingError: with TF Serving's messages for duplicate signatures,
            unsupported methods or signatures that do not fit.
        """
        seen, input_names, output_names, plans = set(), set(), [], []
        for signature_name, method in tasks:
            name = signature_name or DEFAULT_SIGNATURE
            if name in seen:
                raise status.invalid_argument(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            signature = self.signature_defs.get(name)
            if signature is None:
                raise status.invalid_argument(
                    f"Requested signature not found in model graph: {name}"
                )
            if method == CLASSIFY_METHOD:
                input_name, names = check_classification_signature(signature)
            elif method == REGRESS_METHOD:
                input_name, output_name = check_regression_signature(signature)
                names = [output_name]
            else:
                raise status.ServingError(
                    status.Code.UNIMPLEMENTED, f"Unsupported signature method_name: {method}"
                )
            input_names.add(input_name)
            output_names += [name for name in names if name not in output_names]
            plans.append((signature, method))
        examples = _string_array(serialized_examples)
        # Every signature's input tensor gets the same examples (PerformOneShotTensorComputation).
        values = self.run(
            dict.fromkeys(sorted(input_names), examples), output_names, timeout_seconds
        )
        outputs = dict(zip(output_names, values, strict=True))
        count = len(serialized_examples)
        results = []
        for signature, method in plans:
            if method == CLASSIFY_METHOD:
                results.append(
                    ("classification", classification_results(signature, count, outputs))
                )
            else:
                output_name = signature.outputs[REGRESS_OUTPUTS].name
                results.append(("regression", regression_results(count, outputs[output_name])))
        return results

    def _lookup(self, name: str) -> meta_graph_pb2.SignatureDef:
        signature = self.signature_defs.get(name)
        if signature is None:
            raise status.invalid_argument(f"No signature was found with the name: {name}")
        return signature

    def _check_method(self, signature: meta_graph_pb2.SignatureDef, method: str, kind: str):
        if self.options.method_name_check and signature.method_name != method:
            raise status.invalid_argument(
                f"Expected {kind} signature method_name to be {method}. "
                f"Was: {signature.method_name}"
            )

    # -- metadata and warm-up ------------------------------------------------------------

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        """Every SignatureDef of the MetaGraph, as GetModelMetadata reports them."""
        if self._metadata is None:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in self.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature)
            self._metadata = signature_map
        return self._metadata

    def warm_up(self, logs: Iterable[prediction_log_pb2.PredictionLog], iterations: int = 1) -> int:
        """Replays warm-up PredictionLogs `iterations` times, as TF Serving does before a
        version becomes AVAILABLE; returns the number of records read.

        Raises:
          status.ServingError: a replayed request failed (TF Serving then refuses the version)
            or a record is of a kind TF Serving cannot replay.
        """
        count = 0
        for log in logs:
            count += 1
            for _ in range(max(1, iterations)):
                self._replay(log)
        return count

    def _replay(self, log: prediction_log_pb2.PredictionLog) -> None:
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            request = log.predict_log.request
            inputs = {key: tensor_proto.to_array(proto) for key, proto in request.inputs.items()}
            self.predict(request.model_spec.signature_name, inputs, request.output_filter)
        elif kind == "classify_log":
            request = log.classify_log.request
            self.classify(request.model_spec.signature_name, serialized_examples(request.input))
        elif kind == "regress_log":
            request = log.regress_log.request
            self.regress(request.model_spec.signature_name, serialized_examples(request.input))
        elif kind == "multi_inference_log":
            request = log.multi_inference_log.request
            tasks = [(task.model_spec.signature_name, task.method_name) for task in request.tasks]
            self.multi_inference(tasks, serialized_examples(request.input))
        else:
            raise status.unimplemented(f"Unsupported log_type for warmup: {kind}")


# -- loading ---------------------------------------------------------------------------------


FEED_SCOPE = "happysad_feed"


def _relax_input_shapes(
    meta_graph: meta_graph_pb2.MetaGraphDef,
) -> tuple[meta_graph_pb2.MetaGraphDef, dict[str, str]]:
    """A copy of the MetaGraph whose signature inputs accept any shape, and the tensor names
    to feed them by (original name → name in the copy).

    TF Serving feeds tensors through the C++ Session, which never checks a fed tensor
    against its static shape; the Python Session does. So a Placeholder input loses its
    declared shape, and any other fed tensor (say an Identity of ParseExample, as in TF
    Serving's half_plus_two) gets a PlaceholderWithDefault of unknown shape in front of its
    consumers: fed, it passes the tensor on as sent; not fed, it passes the original value.
    """
    relaxed = meta_graph_pb2.MetaGraphDef()
    relaxed.CopyFrom(meta_graph)
    nodes = {node.name: node for node in relaxed.graph_def.node}
    names: dict[str, str] = {}
    for signature in relaxed.signature_def.values():
        for info in signature.inputs.values():
            tensor = info.name
            if tensor in names or not tensor:
                continue
            node_name, _, index = tensor.partition(":")
            node = nodes.get(node_name)
            if node is None:
                names[tensor] = tensor
            elif node.op in ("Placeholder", "PlaceholderWithDefault"):
                if "shape" in node.attr:
                    node.attr["shape"].shape.Clear()
                    node.attr["shape"].shape.unknown_rank = True
                node.attr.pop("_output_shapes", None)
                names[tensor] = tensor
            else:
                names[tensor] = _insert_feed(relaxed, tensor, node_name, index or "0", info.dtype)
    return relaxed, names


def _insert_feed(meta_graph, tensor: str, node_name: str, index: str, dtype: int) -> str:
    feed_name = f"{FEED_SCOPE}/{node_name}_{index}"
    references = {tensor} | ({node_name} if index == "0" else set())
    for node in meta_graph.graph_def.node:
        for position, source in enumerate(node.input):
            if source in references:
                node.input[position] = feed_name
    feed = meta_graph.graph_def.node.add(name=feed_name, op="PlaceholderWithDefault")
    feed.input.append(tensor)
    feed.attr["dtype"].type = dtype
    feed.attr["shape"].shape.unknown_rank = True
    return f"{feed_name}:0"


def _load_into_session(
    session: tf.compat.v1.Session, meta_graph: meta_graph_pb2.MetaGraphDef, path: str
) -> None:
    """Imports the graph, restores the variables and runs the init op with the asset paths."""
    with session.graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta_graph)
        if saver is not None and meta_graph.HasField("saver_def"):
            saver.restore(session, os.path.join(path, "variables", "variables"))
        init_op = _init_op_name(meta_graph)
        if init_op:
            assets = {
                asset.tensor_info.name: os.path.join(path, "assets", asset.filename)
                for asset in meta_graph.asset_file_def
            }
            session.run(init_op, feed_dict=assets)


def _init_op_name(meta_graph: meta_graph_pb2.MetaGraphDef) -> str | None:
    signature = meta_graph.signature_def.get(INIT_OP_SIGNATURE_KEY)
    if signature is not None:
        return signature.outputs[INIT_OP_SIGNATURE_KEY].name
    for key in INIT_OP_COLLECTIONS:
        collection = meta_graph.collection_def.get(key)
        if collection is not None and collection.node_list.value:
            return collection.node_list.value[0]
    return None


# -- signature checks shared with MultiInference ----------------------------------------------


def check_classification_signature(
    signature: meta_graph_pb2.SignatureDef,
) -> tuple[str, list[str]]:
    """(input tensor name, output tensor names) of a classification signature.

    Raises:
      status.ServingError: INVALID_ARGUMENT with classifier.cc's messages.
    """
    if len(signature.inputs) != 1:
        raise status.invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise status.invalid_argument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}"
        )
    if CLASSIFY_INPUTS not in signature.inputs:
        raise status.invalid_argument(
            f"No classification inputs found in SignatureDef: {signature}"
        )
    outputs = [
        signature.outputs[key].name
        for key in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES)
        if key in signature.outputs
    ]
    if not outputs:
        raise status.invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {signature}'
        )
    return signature.inputs[CLASSIFY_INPUTS].name, outputs


def check_regression_signature(signature: meta_graph_pb2.SignatureDef) -> tuple[str, str]:
    """(input tensor name, output tensor name) of a regression signature.

    Raises:
      status.ServingError: INVALID_ARGUMENT with regressor.cc's messages.
    """
    if len(signature.inputs) != 1:
        raise status.invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise status.invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise status.invalid_argument(f"No regression inputs found in SignatureDef: {signature}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise status.invalid_argument(f"No regression outputs found in SignatureDef: {signature}")
    return signature.inputs[REGRESS_INPUTS].name, signature.outputs[REGRESS_OUTPUTS].name


def classification_results(
    signature: meta_graph_pb2.SignatureDef, count: int, outputs: Mapping[str, np.ndarray]
) -> tuple[list[list[bytes]] | None, list[list[float]] | None]:
    """Checks the classes/scores outputs (classifier.cc) and returns them as lists."""
    tensors = {}
    for key, dtype in (
        (CLASSIFY_OUTPUT_CLASSES, "DT_STRING"),
        (CLASSIFY_OUTPUT_SCORES, "DT_FLOAT"),
    ):
        if key not in signature.outputs:
            tensors[key] = None
            continue
        tensor = np.asarray(outputs[signature.outputs[key].name])
        if tensor.ndim != 2:
            raise status.invalid_argument(
                "Expected Tensor shape: [batch_size num_classes] but got "
                f"{_shape_text(tensor.shape)}"
            )
        actual = tensor_proto.dtype_name(tensor)
        if actual != dtype:
            raise status.invalid_argument(f"Expected {key} Tensor of {dtype}. Got: {actual}")
        if tensor.shape[0] != count:
            raise status.invalid_argument(
                f"Expected {key} output batch size of {count}. Got: {tensor.shape[0]}"
            )
        tensors[key] = tensor
    classes, scores = tensors[CLASSIFY_OUTPUT_CLASSES], tensors[CLASSIFY_OUTPUT_SCORES]
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise status.invalid_argument(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    labels = None if classes is None else [[bytes(label) for label in row] for row in classes]
    values = None if scores is None else scores.astype(np.float32).tolist()
    return labels, values


def regression_results(count: int, values: np.ndarray) -> np.ndarray:
    """Checks a regression output (regressor.cc) and returns it as float32 [count]."""
    values = np.asarray(values)
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise status.invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
            f"but got {_shape_text(values.shape)}"
        )
    if values.shape[0] != count:
        raise status.invalid_argument(
            f"Input batch size did not match output batch size: {count} vs. {values.shape[0]}"
        )
    if values.dtype != np.float32:
        raise status.invalid_argument(
            f"Expected output Tensor of DT_FLOAT.  Got: {tensor_proto.dtype_name(values)}"
        )
    return values.reshape(-1)


def serialized_examples(model_input) -> list[bytes]:
    """The serialized tf.Examples of a tensorflow.serving.Input, context first (TF Serving's
    ExampleListWithContext merges the context into every example, the example's own
    features winning)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        return [example.SerializeToString() for example in model_input.example_list.examples]
    if kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        context = with_context.context.SerializeToString()
        return [context + example.SerializeToString() for example in with_context.examples]
    raise status.invalid_argument("Input is empty.")


# -- small helpers ---------------------------------------------------------------------------


def _check_input_keys(signature: meta_graph_pb2.SignatureDef, inputs: Mapping) -> None:
    expected, sent = set(signature.inputs), set(inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise status.invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
        )
    unknown = sorted(sent - expected)
    if unknown:
        raise status.invalid_argument(
            f"input tensor alias not found in signature: {unknown[0]}. Inputs expected to be in "
            f"the set {{{','.join(sorted(expected))}}}."
        )


def _output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]):
    aliases: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise status.invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in aliases:
            raise status.invalid_argument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return aliases or sorted(signature.outputs)


def _checked_input(index: int, value: np.ndarray, dtype_enum: int) -> np.ndarray:
    """The array as fed; a dtype that differs from the signature's is refused, as the C++
    Session refuses it."""
    array = np.asarray(value)
    expected = types_pb2.DataType.Name(dtype_enum)
    actual = tensor_proto.dtype_name(array)
    if actual != expected:
        if expected == "DT_STRING" and array.dtype == object:
            return array
        raise status.invalid_argument(
            f"Expects arg[{index}] to be {_dtype_text(expected)} but {_dtype_text(actual)} "
            "is provided"
        )
    return array


def _dtype_text(name: str) -> str:
    return name.removeprefix("DT_").lower()


def _string_array(values: Sequence[bytes]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"
