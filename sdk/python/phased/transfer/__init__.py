"""The transfer manager of the Python SDK: rooms over ZeroMQ sockets and
shared memory (docs/protocol.md sections 3-7). See manager.py."""

from .curve import (CURVE_KEY_FILE_ENV, CurveKeyError, CurveKeys, curve_from_env, new_curve_keys, read_curve_key_file,
                    write_curve_key_file)
from .frames import (BOOTSTRAPPING, FAILED, RECEIVER, SENDER, SUCCESS, TRANSFERRING, WAITING_FOR_INPUT,
                     can_transition, status_name)
from .manager import (BackendCounters, CancelledError, Manager, NotStartedError, ReleasedError, RoomExistsError, RoomFailedError,
                      RoomRemovedError, RoomState, TransferError, UnknownRoomError)
from .segment import sweep_segments

__all__ = [
    "BackendCounters", "Manager", "RoomState", "TransferError", "UnknownRoomError", "RoomExistsError", "RoomRemovedError",
    "RoomFailedError", "ReleasedError", "NotStartedError", "CancelledError", "sweep_segments",
    "FAILED", "BOOTSTRAPPING", "WAITING_FOR_INPUT", "TRANSFERRING", "SUCCESS", "SENDER", "RECEIVER",
    "can_transition", "status_name",
    "CURVE_KEY_FILE_ENV", "CurveKeys", "CurveKeyError", "curve_from_env", "new_curve_keys", "read_curve_key_file",
    "write_curve_key_file",
]
