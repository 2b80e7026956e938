"""The one table from domain exceptions to gRPC status codes."""
from __future__ import annotations

import grpc

from dualvec.kernel.errors import (BundleError, DeadlineExpired, DualvecError, InvalidArgument, ModelError, Overloaded,
                            SpaceUnavailable, UnknownModel, UnknownWords)

STATUS_OF: dict[type[DualvecError], grpc.StatusCode] = {
    UnknownWords: grpc.StatusCode.NOT_FOUND,
    UnknownModel: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    SpaceUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    BundleError: grpc.StatusCode.FAILED_PRECONDITION,
    ModelError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(exc: DualvecError) -> grpc.StatusCode:
    """The status code of a domain exception (its nearest listed base class; UNKNOWN if none)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.UNKNOWN
