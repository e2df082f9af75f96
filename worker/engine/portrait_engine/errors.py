"""Failures that end one request with an error event; the engine keeps serving."""

from .protocol import ErrorCode


class EngineError(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Cancelled(EngineError):
    def __init__(self) -> None:
        super().__init__("cancelled", "cancelled by request")
