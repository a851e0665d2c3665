"""TensorFlow's canonical error codes, the HTTP statuses TF Serving's REST API maps them to,
and its bound on error messages. The codes are gRPC's status codes, number for number."""

import enum


class Code(enum.IntEnum):
    """tensorflow.error.Code, as TF Serving reports it in `status.error_code`."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# tensorflow_serving/model_servers/http_server.cc: ToHTTPStatusCode.
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


# What requests refused or cancelled by a shutdown are told (UNAVAILABLE, HTTP 503).
SHUTTING_DOWN = "The server is shutting down"
# TF Serving cuts error messages here (model_servers/grpc_status_util.cc, kErrorMessageLimit).
MAX_MESSAGE_CHARS = 1024
TRUNCATED_SUFFIX = "...TRUNCATED"


def bounded(message: str) -> str:
    """`message` cut to MAX_MESSAGE_CHARS, as TF Serving cuts its gRPC error messages."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + TRUNCATED_SUFFIX


class ServingError(Exception):
    """A failed request, carrying the canonical code that picks its HTTP and gRPC status.

    The message is bounded (MAX_MESSAGE_CHARS), so no error echoes a whole request back.
    """

    def __init__(self, code: Code, message: str, http_status: int | None = None):
        message = bounded(message)
        super().__init__(message)
        self.code = Code(code)
        self.message = message
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        """TF Serving's mapping of the code, unless the error names its own status."""
        return self._http_status or HTTP_STATUS[self.code]


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(Code.UNAVAILABLE, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(Code.UNIMPLEMENTED, message)


def deadline_exceeded(message: str = "Deadline Exceeded") -> ServingError:
    return ServingError(Code.DEADLINE_EXCEEDED, message)


def _without_trace(message: str) -> str:
    """TF's op message without the "Graph execution error ... Detected at node" preamble.

    What remains is what TF Serving shows: the error and the `[[{{node ...}}]]` it came from.
    """
    if not message.startswith("Graph execution error"):
        return message
    kept = [
        line
        for line in message.splitlines()
        if line.strip()
        and not line.startswith(("Graph execution error", "Detected at node", "  ", "<stack"))
    ]
    return "\n".join(kept) or message


def from_exception(error: BaseException) -> ServingError:
    """The ServingError for anything a model call raised: TF's own code, or INVALID_ARGUMENT.

    TensorFlow op errors carry their canonical code (a corrupt JPEG is INVALID_ARGUMENT, an
    allocation failure RESOURCE_EXHAUSTED); Python-level errors from calling a signature
    with the wrong dtype or shape are the caller's mistake.
    """
    if isinstance(error, ServingError):
        return error
    code = getattr(error, "error_code", None)
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    if code is not None and code in Code._value2member_map_:
        return ServingError(Code(code), _without_trace(message))
    if isinstance(error, (ValueError, TypeError)):
        return invalid_argument(message)
    return ServingError(Code.INTERNAL, message)
