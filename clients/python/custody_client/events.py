"""Every kind of event an actor submits, typed (DOMAIN.md's table).

Carats, shares and dollars are strings ("12.40"): the ledger reads them
exactly, never as floating point. Dates are `datetime`s or RFC 3339 text;
a plain `date` means its midnight, UTC.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Union

When = Union[datetime.datetime, datetime.date, str, None]


def _rfc3339(when: When) -> str:
    if when is None:
        when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    if isinstance(when, str):
        return when
    if not isinstance(when, datetime.datetime):
        when = datetime.datetime(when.year, when.month, when.day, tzinfo=datetime.timezone.utc)
    if when.tzinfo is None:
        raise ValueError(f"{when} has no time zone: give an aware datetime (UTC)")
    return when.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Portion:
    """A new lot and its carats (an output of a split, merge or processing)."""

    lot: str
    carats: str


@dataclass(frozen=True)
class Certificate:
    """An export's document: the KP certificate (rough) or export declaration."""

    number: str
    value_usd: str


@dataclass(frozen=True)
class CountryShare:
    country: str
    share: str


@dataclass
class Event:
    """Fields every event has; each kind adds its own."""

    KIND: ClassVar[str] = ""

    def fields(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("id", "occurred_at"):
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = _plain(value)
        return out

    def payload(self, actor: str) -> Dict[str, Any]:
        """The event as the ledger reads it, for `actor`."""
        occurred = _rfc3339(getattr(self, "occurred_at", None))
        fields = self.fields()
        event_id = getattr(self, "id", None) or default_id(self.KIND, actor, occurred if getattr(self, "occurred_at", None) else "", fields)
        return {"id": event_id, "kind": self.KIND, "actor": actor, "occurred_at": occurred, **fields}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def default_id(kind: str, actor: str, occurred: str, fields: Dict[str, Any]) -> str:
    """The kind and a hash of what the event says: the same event sent
    twice is one event (its first receipt comes back)."""
    text = json.dumps([kind, actor, occurred, fields], sort_keys=True, separators=(",", ":"))
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


@dataclass
class Mined(Event):
    KIND: ClassVar[str] = "mined"
    lot: str
    carats: str
    country: str
    mine: Optional[str] = None
    id: Optional[str] = None
    occurred_at: When = None


@dataclass
class Split(Event):
    KIND: ClassVar[str] = "split"
    lot: str
    into: List[Portion]
    id: Optional[str] = None
    occurred_at: When = None


@dataclass
class Merged(Event):
    KIND: ClassVar[str] = "merged"
    lots: List[str]
    into: Portion
    id: Optional[str] = None
    occurred_at: When = None


@dataclass
class Transferred(Event):
    KIND: ClassVar[str] = "transferred"
    lots: List[str]
    to: str
    id: Optional[str] = None
    occurred_at: When = None


@dataclass
class Exported(Event):
    KIND: ClassVar[str] = "exported"
    lots: List[str]
    to: str
    to_country: str
    certificate: Certificate
    id: Optional[str] = None
    occurred_at: When = None


@dataclass
class Imported(Event):
    KIND: ClassVar[str] = "imported"
    certificate: Optional[str] = None
    lots: Optional[List[str]] = None
    id: Optional[str] = None
    occurred_at: When = None


@dataclass
class Processed(Event):
    KIND: ClassVar[str] = "processed"
    lot: str
    process: str
    country: str
    into: List[Portion]
    id: Optional[str] = None
    occurred_at: When = None


@dataclass
class Declared(Event):
    KIND: ClassVar[str] = "declared"
    lot: str
    carats: str
    state: str
    origin: Union[str, List[CountryShare]] = "unknown"
    id: Optional[str] = None
    occurred_at: When = None


@dataclass
class Flagged(Event):
    KIND: ClassVar[str] = "flagged"
    lot: str
    reason: str
    id: Optional[str] = None
    occurred_at: When = None


@dataclass
class Verified(Event):
    KIND: ClassVar[str] = "verified"
    carats: str
    verification: str
    finding: str
    certificate: Optional[str] = None
    lots: Optional[List[str]] = None
    reason: Optional[str] = None
    id: Optional[str] = None
    occurred_at: When = None


KINDS = {cls.KIND: cls for cls in (Mined, Split, Merged, Transferred, Exported, Imported, Processed, Declared, Flagged, Verified)}
