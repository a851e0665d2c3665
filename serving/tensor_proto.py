"""numpy arrays to and from `tensorflow.TensorProto`, as TF Serving's gRPC API writes them.

Requests are read with `tf.make_ndarray`, which understands every encoding a client may use
(`tensor_content` or the typed `*_val` fields, with TF's repeat-the-last-value shorthand).
Responses are written the way tensorflow_model_server writes them by default: in the typed
fields (`float_val`, `int64_val`, `string_val`, ...), what TensorFlow's `Tensor::AsProtoField`
does (tensorflow/core/framework/tensor.cc). `--enable_serialization_as_tensor_content`
switches to `tensor_content` for numeric tensors, as there.
"""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving import status

# DataType → the TensorProto field AsProtoField fills.
_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}
# Half-precision values travel as their 16-bit patterns in half_val.
_HALF_TYPES = (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)
_COMPLEX_FIELDS = {types_pb2.DT_COMPLEX64: "scomplex_val", types_pb2.DT_COMPLEX128: "dcomplex_val"}


def dtype_enum(array: np.ndarray) -> int:
    """The DataType of a numpy array (object and bytes arrays are DT_STRING).

    Raises:
      status.ServingError: INVALID_ARGUMENT for a dtype TensorFlow has no type for.
    """
    if array.dtype == object or array.dtype.kind in "SU":
        return types_pb2.DT_STRING
    try:
        return tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    except TypeError:
        raise status.invalid_argument(f"Unsupported tensor dtype: {array.dtype}") from None


def dtype_name(array: np.ndarray) -> str:
    """`DT_FLOAT`, `DT_STRING`, ...: the DataType name of a numpy array."""
    return types_pb2.DataType.Name(dtype_enum(np.asarray(array)))


def to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The numpy array of a TensorProto (DT_STRING as an object array of bytes).

    Raises:
      status.ServingError: INVALID_ARGUMENT for a proto whose values do not fit its shape
        or dtype.
    """
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise status.invalid_argument(f"Cannot parse tensor from proto: {error}") from None


def from_array(value: np.ndarray, as_tensor_content: bool = False) -> tensor_pb2.TensorProto:
    """A TensorProto of `value`: typed `*_val` fields (AsProtoField), or `tensor_content`.

    Raises:
      status.ServingError: INVALID_ARGUMENT for a dtype TensorFlow has no type for.
    """
    array = np.asarray(value)
    dtype = dtype_enum(array)
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=_shape_proto(array.shape))
    if as_tensor_content and dtype != types_pb2.DT_STRING:
        # Tensor::AsProtoTensorContent: the little-endian bytes in C order.
        proto.tensor_content = (
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        )
        return proto
    flat = array.reshape(-1)
    if dtype in _FIELDS:
        field = getattr(proto, _FIELDS[dtype])
        if dtype == types_pb2.DT_STRING:
            field.extend(_as_bytes(item) for item in flat)
        else:
            field.extend(flat.tolist())
    elif dtype in _HALF_TYPES:
        proto.half_val.extend(flat.view(np.uint16).tolist())
    elif dtype in _COMPLEX_FIELDS:
        pairs = np.stack([flat.real, flat.imag], axis=-1).reshape(-1)
        getattr(proto, _COMPLEX_FIELDS[dtype]).extend(pairs.tolist())
    else:
        return tf.make_tensor_proto(array)
    return proto


def _shape_proto(shape) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(size)) for size in shape]
    )


def _as_bytes(item) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, np.bytes_):
        return bytes(item)
    return str(item).encode("utf-8")
