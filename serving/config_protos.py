"""TF Serving's BatchingParameters and MonitoringConfig messages, which tensorflow-serving-api lacks.

`tensorflow-serving-api` ships the model server config (`model_server_config_pb2`) but not the
messages of `--batching_parameters_file` and `--monitoring_config_file`. They are built here
with the protobuf runtime from FileDescriptorProtos that restate, field for field (names,
numbers, types), these definitions of TensorFlow Serving 2.21:

- tensorflow_serving/servables/tensorflow/session_bundle_config.proto: BatchingParameters
  (only that message of the file; its other messages configure sessions, not batching);
- tensorflow_serving/config/monitoring_config.proto: PrometheusConfig, MonitoringConfig.

They live in a descriptor pool of their own, so a later tensorflow-serving-api that ships the
same files cannot clash with them. Text-format files written for tensorflow_model_server parse
into these messages unchanged (`text_format.Parse(text, BatchingParameters())`).
"""

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

_MONITORING_CONFIG_FILE = """
name: "tensorflow_serving/config/monitoring_config.proto"
package: "tensorflow.serving"
syntax: "proto3"
message_type {
  name: "PrometheusConfig"
  field { name: "enable" number: 1 label: LABEL_OPTIONAL type: TYPE_BOOL json_name: "enable" }
  field { name: "path" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING json_name: "path" }
}
message_type {
  name: "MonitoringConfig"
  field {
    name: "prometheus_config" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".tensorflow.serving.PrometheusConfig" json_name: "prometheusConfig"
  }
}
"""

# session_bundle_config.proto's BatchingParameters; the file's other messages are left out.
_BATCHING_PARAMETERS_FILE = """
name: "tensorflow_serving/servables/tensorflow/session_bundle_config.proto"
package: "tensorflow.serving"
syntax: "proto3"
dependency: "google/protobuf/wrappers.proto"
message_type {
  name: "BatchingParameters"
  field {
    name: "max_batch_size" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".google.protobuf.Int64Value" json_name: "maxBatchSize"
  }
  field {
    name: "batch_timeout_micros" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".google.protobuf.Int64Value" json_name: "batchTimeoutMicros"
  }
  field {
    name: "max_enqueued_batches" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".google.protobuf.Int64Value" json_name: "maxEnqueuedBatches"
  }
  field {
    name: "num_batch_threads" number: 4 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".google.protobuf.Int64Value" json_name: "numBatchThreads"
  }
  field {
    name: "thread_pool_name" number: 5 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".google.protobuf.StringValue" json_name: "threadPoolName"
  }
  field {
    name: "allowed_batch_sizes" number: 6 label: LABEL_REPEATED type: TYPE_INT64
    json_name: "allowedBatchSizes"
  }
  field {
    name: "pad_variable_length_inputs" number: 7 label: LABEL_OPTIONAL type: TYPE_BOOL
    json_name: "padVariableLengthInputs"
  }
  field {
    name: "enable_large_batch_splitting" number: 8 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".google.protobuf.BoolValue" json_name: "enableLargeBatchSplitting"
  }
  field {
    name: "max_execution_batch_size" number: 9 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".google.protobuf.Int64Value" json_name: "maxExecutionBatchSize"
  }
}
"""


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    for text in (_MONITORING_CONFIG_FILE, _BATCHING_PARAMETERS_FILE):
        pool.Add(text_format.Parse(text, descriptor_pb2.FileDescriptorProto()))
    return pool


_POOL = _build_pool()

PrometheusConfig = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.PrometheusConfig")
)
MonitoringConfig = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
)
BatchingParameters = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
)
