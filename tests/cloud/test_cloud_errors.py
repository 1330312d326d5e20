"""The one error mapping: fpnlink errors -> gRPC status + HTTP status; anything else -> INTERNAL, logged."""

from __future__ import annotations

import logging

import grpc
import pytest

from fpnlink.cloud.errors import INTERNAL_MESSAGE, map_error, status_for
from fpnlink.shared.errors import (
    BadFrameError, CodecError, FingerprintMismatchError, LimitExceededError, NotReadyError, UnsupportedError,
    WeightsError,
)


@pytest.mark.parametrize(("error", "code", "http_status"), [
    (BadFrameError("bad"), grpc.StatusCode.INVALID_ARGUMENT, 400),
    (CodecError("corrupt"), grpc.StatusCode.INVALID_ARGUMENT, 400),
    (UnsupportedError("codec x"), grpc.StatusCode.UNIMPLEMENTED, 422),
    (FingerprintMismatchError("other backbone"), grpc.StatusCode.FAILED_PRECONDITION, 409),
    (LimitExceededError("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (NotReadyError("loading"), grpc.StatusCode.UNAVAILABLE, 503),
])
def test_client_errors_keep_their_message(error, code, http_status, caplog):
    with caplog.at_level(logging.ERROR):
        mapped = map_error(error)
    assert (mapped.code, mapped.http_status, mapped.message) == (code, http_status, str(error))
    assert not mapped.internal and not caplog.records
    assert status_for(error) == (code, http_status)


@pytest.mark.parametrize("error", [RuntimeError("tensor size mismatch"), WeightsError("gone"), KeyError("x")])
def test_anything_else_is_internal_and_logged_with_traceback(error, caplog):
    try:
        raise error
    except Exception as exc:
        with caplog.at_level(logging.ERROR, logger="fpnlink.cloud.errors"):
            mapped = map_error(exc)
    assert (mapped.code, mapped.http_status) == (grpc.StatusCode.INTERNAL, 500) and mapped.internal
    assert mapped.message.startswith(INTERNAL_MESSAGE) and type(error).__name__ in mapped.message
    [record] = caplog.records
    assert record.exc_info is not None
