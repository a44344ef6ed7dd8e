"""Domain errors: each carries a stable reason and, where there is one, the offending field."""

from __future__ import annotations


class GongjiError(Exception):
    """Base of every expected failure. `reason` is stable UPPER_SNAKE_CASE; `field` names the input."""

    default_reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.field = field
        # True when this is a stored refusal given again to a resend (D15).
        self.replay = False


class InvalidArgument(GongjiError):
    """A malformed or invalid field."""

    default_reason = "INVALID_ARGUMENT"


class Unauthenticated(GongjiError):
    """Bad signature, unknown or inactive key, algorithm not allowed."""

    default_reason = "BAD_SIGNATURE"


class PermissionDenied(GongjiError):
    """A province acting for another, or on something that is not its own (D14, D20)."""

    default_reason = "NOT_YOUR_PROVINCE"


class NotFound(GongjiError):
    """What is named does not exist, or is not the caller's to see: the two get the same answer."""

    default_reason = "NOT_FOUND"


class AlreadyExists(GongjiError):
    """An id is taken, or was used before with different content (D15)."""

    default_reason = "ALREADY_EXISTS"


class ModifiedRequest(AlreadyExists):
    """Same (sender, message_id), different payload bytes (D15)."""

    default_reason = "MODIFIED_REQUEST"


class FailedPrecondition(GongjiError):
    """A rule or the current state forbids it; stored and replayed like any answer."""

    default_reason = "FAILED_PRECONDITION"


class RequestInFlight(GongjiError):
    """The same (sender, message_id) is being processed right now: retry with the same key."""

    default_reason = "REQUEST_IN_FLIGHT"


class Unavailable(GongjiError):
    """Someone the answer needs cannot give it now (a province, the gateway stopping): nothing was done, retry."""

    default_reason = "UNAVAILABLE"


class DatabaseBusy(Unavailable):
    """Another connection has held a lock the call needs for longer than the gateway waits (SQLite's write lock, a
    PostgreSQL table or row lock). Nothing was changed: retry later, with the same message_id."""

    default_reason = "DATABASE_BUSY"


class DatabaseUnavailable(Unavailable):
    """The gateway cannot reach its database, or lost its connection during the call (the database restarted or
    ended it). Nothing was committed, or, when the connection was lost at the commit, it is not known whether the
    change was: retry with the same message_id, which executes once either way."""

    default_reason = "DATABASE_UNAVAILABLE"


class Unimplemented(GongjiError):
    """Declared in the contract, implemented by a later release."""

    default_reason = "NOT_IMPLEMENTED"


class Contention(GongjiError):
    """The database gave up on a transaction because of another one (deadlock, serialization failure).
    Nothing was changed; the gateway retries a few times before saying so."""

    default_reason = "CONTENTION"


class RateLimited(GongjiError):
    """The calling province has spent its request budget for now: retry later, with the same message_id."""

    default_reason = "RATE_LIMITED"
