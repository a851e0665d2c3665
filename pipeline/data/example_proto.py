"""tf.train.Example without importing TensorFlow, for Beam workers that only write TFRecords.

TensorFlow's import costs each Beam worker process about 5 s, longer than cleaning thousands
of faces, and a worker that writes examples needs nothing of it but the message class. The
class is built here by the protobuf runtime from the definitions of
tensorflow/core/example/example.proto and feature.proto (same package, names and field
numbers, in a private descriptor pool), so the bytes it writes are what TensorFlow writes and
`tf.train.Example.FromString` reads them back (tests/pipeline/test_example_proto.py).
"""

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "tensorflow"


def example(features: dict[str, bytes | int | float | list]) -> bytes:
    """A serialized tf.train.Example: bytes → BytesList, int → Int64List, float → FloatList.

    A list value gives a multi-valued feature of its elements' type (an empty list is an
    empty Int64List).
    """
    message = example_class()()
    for key, value in features.items():
        values = value if isinstance(value, list) else [value]
        feature = message.features.feature[key]
        if values and isinstance(values[0], bytes):
            feature.bytes_list.value.extend(values)
        elif values and isinstance(values[0], float):
            feature.float_list.value.extend(values)
        else:
            feature.int64_list.value.extend(values)
    return message.SerializeToString(deterministic=True)


@functools.cache
def example_class() -> type:
    """The message class of tensorflow.Example."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Example"))


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """example.proto and feature.proto, as one proto3 file."""
    file = descriptor_pb2.FileDescriptorProto(
        name="happysad/tensorflow_example.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, value_type in (
        ("BytesList", _FIELD.TYPE_BYTES),
        ("FloatList", _FIELD.TYPE_FLOAT),
        ("Int64List", _FIELD.TYPE_INT64),
    ):
        _message(file, name).field.append(_field("value", 1, value_type, repeated=True))
    feature = _message(file, "Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, type_name) in enumerate(
        (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")),
        start=1,
    ):
        field = _field(name, number, _FIELD.TYPE_MESSAGE, type_name=type_name)
        field.oneof_index = 0
        feature.field.append(field)
    features = _message(file, "Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.append(_field("key", 1, _FIELD.TYPE_STRING))
    entry.field.append(_field("value", 2, _FIELD.TYPE_MESSAGE, type_name="Feature"))
    features.field.append(
        _field("feature", 1, _FIELD.TYPE_MESSAGE, "Features.FeatureEntry", repeated=True)
    )
    _message(file, "Example").field.append(
        _field("features", 1, _FIELD.TYPE_MESSAGE, type_name="Features")
    )
    return file


def _message(file: descriptor_pb2.FileDescriptorProto, name: str) -> descriptor_pb2.DescriptorProto:
    return file.message_type.add(name=name)


def _field(
    name: str, number: int, field_type: int, type_name: str = "", repeated: bool = False
) -> descriptor_pb2.FieldDescriptorProto:
    label = _FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL
    field = _FIELD(name=name, number=number, type=field_type, label=label)
    if type_name:
        field.type_name = f".{_PACKAGE}.{type_name}"
    return field
