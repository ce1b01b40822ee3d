"""One exception tree: what failed, and whether trying again can help."""

from __future__ import annotations


class NewsroomError(Exception):
    """Base of every error the pipeline raises on purpose."""

    code = "error"
    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TransientError(NewsroomError):
    """Something outside us failed for now (database locked, Redis down): retry."""

    code = "unavailable"
    status = 503


class PermanentError(NewsroomError):
    """The input or state is wrong; retrying cannot help. Recorded and shown."""

    code = "invalid"
    status = 422


class SkipEvent(NewsroomError):
    """Nothing to do (already done, superseded); the task ends successfully."""

    code = "skipped"
    status = 200


class NotFound(PermanentError):
    code = "not_found"
    status = 404


class Conflict(PermanentError):
    code = "conflict"
    status = 409


class Unprocessable(PermanentError):
    code = "unprocessable"
    status = 422


class BadRequest(PermanentError):
    code = "malformed"
    status = 400


class Unauthorized(PermanentError):
    code = "unauthorized"
    status = 401


class Forbidden(PermanentError):
    code = "forbidden"
    status = 403
