"""Error codes (Mooncake's numbering) and the typed exceptions every process raises and maps.

One table, `CODE_TO_ERROR`, turns a code into an exception class; servicers send codes,
clients call `raise_for_code`. Codes below -1200 are ours (Mooncake has no authentication).
"""
from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    OK = 0
    INTERNAL_ERROR = -1
    BUFFER_OVERFLOW = -10
    SEGMENT_NOT_FOUND = -101
    NO_AVAILABLE_HANDLE = -200  # no space
    INVALID_KEY = -400
    WRITE_FAIL = -500
    INVALID_PARAMS = -600
    INVALID_WRITE = -700
    INVALID_READ = -701
    INVALID_REPLICA = -702
    REPLICA_IS_NOT_READY = -703
    OBJECT_NOT_FOUND = -704
    OBJECT_ALREADY_EXISTS = -705
    OBJECT_HAS_LEASE = -706
    LEASE_EXPIRED = -707
    TRANSFER_FAIL = -800
    RPC_FAIL = -900
    UNAVAILABLE_IN_CURRENT_STATUS = -1010
    NOT_SUPPORTED = -1012  # the peer does not know the call (an older master)
    UNAUTHENTICATED = -1300
    PERMISSION_DENIED = -1301
    SPACE_BEING_FREED = -1400  # PutStart: eviction under way, retry (clients wait, then -200)


class MooncakeError(Exception):
    """Base of every store error; `code` is the Mooncake numeric code."""

    code: int = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str = "", code: int | None = None):
        super().__init__(message or self.__class__.__name__)
        if code is not None:
            self.code = int(code)

    @property
    def message(self) -> str:
        return str(self.args[0])


class NoSpaceError(MooncakeError):
    code = ErrorCode.NO_AVAILABLE_HANDLE


class NotFoundError(MooncakeError):
    """Raised only where a miss is an error (remove of an unknown key); get returns None."""
    code = ErrorCode.OBJECT_NOT_FOUND


class AlreadyExistsError(MooncakeError):
    code = ErrorCode.OBJECT_ALREADY_EXISTS


class HasLeaseError(MooncakeError):
    code = ErrorCode.OBJECT_HAS_LEASE


class LeaseExpiredError(MooncakeError):
    code = ErrorCode.LEASE_EXPIRED


class ReplicaNotReadyError(MooncakeError):
    code = ErrorCode.REPLICA_IS_NOT_READY


class UnavailableError(MooncakeError):
    code = ErrorCode.RPC_FAIL


class RdmaUnavailableError(UnavailableError):
    """This process or the peer has no usable RDMA device (or was built without rdma-core):
    retrying will not help, use another transport."""
    code = ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS


class TransferError(MooncakeError):
    code = ErrorCode.TRANSFER_FAIL


class UnauthenticatedError(MooncakeError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDeniedError(MooncakeError):
    code = ErrorCode.PERMISSION_DENIED


class InvalidArgumentError(MooncakeError):
    code = ErrorCode.INVALID_PARAMS


class InternalError(MooncakeError):
    code = ErrorCode.INTERNAL_ERROR


class NotSupportedError(MooncakeError):
    code = ErrorCode.NOT_SUPPORTED


CODE_TO_ERROR: dict[int, type[MooncakeError]] = {
    ErrorCode.INTERNAL_ERROR: InternalError,
    ErrorCode.BUFFER_OVERFLOW: InvalidArgumentError,
    ErrorCode.SEGMENT_NOT_FOUND: UnavailableError,
    ErrorCode.NO_AVAILABLE_HANDLE: NoSpaceError,
    ErrorCode.SPACE_BEING_FREED: NoSpaceError,  # reaches a caller only once its wait ran out
    ErrorCode.INVALID_KEY: InvalidArgumentError,
    ErrorCode.WRITE_FAIL: TransferError,
    ErrorCode.INVALID_PARAMS: InvalidArgumentError,
    ErrorCode.INVALID_WRITE: TransferError,
    ErrorCode.INVALID_READ: TransferError,
    ErrorCode.INVALID_REPLICA: TransferError,
    ErrorCode.REPLICA_IS_NOT_READY: ReplicaNotReadyError,
    ErrorCode.OBJECT_NOT_FOUND: NotFoundError,
    ErrorCode.OBJECT_ALREADY_EXISTS: AlreadyExistsError,
    ErrorCode.OBJECT_HAS_LEASE: HasLeaseError,
    ErrorCode.LEASE_EXPIRED: LeaseExpiredError,
    ErrorCode.TRANSFER_FAIL: TransferError,
    ErrorCode.RPC_FAIL: UnavailableError,
    ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS: UnavailableError,
    ErrorCode.UNAUTHENTICATED: UnauthenticatedError,
    ErrorCode.PERMISSION_DENIED: PermissionDeniedError,
    ErrorCode.NOT_SUPPORTED: NotSupportedError,
}


def error_for_code(code: int, message: str = "") -> MooncakeError:
    """The exception for a non-zero code; unknown codes become a plain MooncakeError."""
    cls = CODE_TO_ERROR.get(code, MooncakeError)
    return cls(message or f"mooncake error {code}", code=code)


def raise_for_code(code: int, message: str = "") -> None:
    if code != ErrorCode.OK:
        raise error_for_code(code, message)
