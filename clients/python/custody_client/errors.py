"""What can go wrong, each said in words a producer can act on."""

from __future__ import annotations

from typing import Optional


class CustodyError(Exception):
    """Anything custody-client could not do; `str()` says what and why."""


class BadKeyFile(CustodyError):
    """The key file is not an actor's nkey seed (`SU...`)."""


class Unreachable(CustodyError):
    """No NATS server answered at the URL."""


class NotRegistered(CustodyError):
    """The server refused the key: it is not (or no longer) registered."""


class NoAnswer(CustodyError):
    """The ledger did not answer in time; the same event may be sent again
    (its id makes that harmless: the first receipt comes back)."""


class Refused(CustodyError):
    """The ledger refused the event: nothing was recorded.

    `code` is the ledger's stable machine-readable code (`lot_consumed`,
    `invalid_carats`, ...), `message` says why in plain words.
    """

    def __init__(self, code: str, message: str, id: Optional[str] = None, retry_after_ms: Optional[int] = None):
        super().__init__(f"refused ({code}): {message}")
        self.code = code
        self.message = message
        self.id = id
        self.retry_after_ms = retry_after_ms
