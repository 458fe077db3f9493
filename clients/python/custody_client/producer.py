"""A connection to a custody deployment as one actor."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import nats
import nats.errors

from . import envelope
from .errors import NoAnswer, NotRegistered, Refused, Unreachable
from .events import Event
from .keys import Key

BATCH_MAX = 1000


@dataclass(frozen=True)
class Receipt:
    """The ledger's receipt: the entry is recorded (fsynced on a majority)."""

    id: str
    seq: int
    hash: str
    recorded_at: str


@dataclass(frozen=True)
class Queued:
    """An edge's acknowledgement: on the mine's disk, forwarded when the
    link is up; the receipt follows (`custody edge receipts`)."""

    stream: str
    seq: int


Outcome = Union[Receipt, Refused, Queued]


def outcome(answer: Dict[str, Any]) -> Outcome:
    if "code" in answer:
        return Refused(answer["code"], answer.get("message", ""), answer.get("id"), answer.get("retry_after_ms"))
    if "hash" in answer:
        return Receipt(answer["id"], answer["seq"], answer["hash"], answer["recorded_at"])
    return Queued(answer.get("stream", ""), answer.get("seq", 0))


class Producer:
    """Submits one actor's events; `async with await Producer.connect(...)`."""

    def __init__(self, nc: "nats.NATS", key: Key, timeout: float):
        self._nc = nc
        self.key = key
        self.timeout = timeout

    @classmethod
    async def connect(cls, url: str, key_file: Union[str, Path], timeout: float = 10.0) -> "Producer":
        """Logs in to NATS at `url` as the actor whose seed is in `key_file`."""
        key = Key.load(key_file)
        refused: List[str] = []

        async def on_error(e: Exception) -> None:
            refused.append(str(e))

        try:
            nc = await nats.connect(
                url,
                nkeys_seed_str=key.seed,
                inbox_prefix=f"_INBOX_{key.public_key}",
                allow_reconnect=False,
                max_reconnect_attempts=2,
                reconnect_time_wait=0.5,
                connect_timeout=timeout,
                error_cb=on_error,
            )
        except Exception as e:  # nats-py raises several kinds; each is told apart by what the server said
            said = [str(e), *refused]
            if any("authorization" in s.lower() for s in said):
                raise NotRegistered(
                    f"{url} refused the key {key.public_key} ({key_file}): it is not registered on this ledger, or was revoked. "
                    "Ask the ledger's authority to register it (an actor.registered event naming this key)"
                ) from None
            last = refused[-1] if refused else str(e) or type(e).__name__
            raise Unreachable(f"no NATS server answered at {url}: is custody running there? ({last})") from None
        return cls(nc, key, timeout)

    async def __aenter__(self) -> "Producer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._nc.close()

    @property
    def subject(self) -> str:
        return f"custody.submit.{self.key.public_key}"

    async def _request(self, body: bytes, headers: Optional[Dict[str, str]], timeout: float) -> Any:
        # The same bytes again while no answer comes: a writer that stepped
        # down never answers, and the ledger answers a repeat with its
        # first outcome.
        for attempt in range(1, 6):
            try:
                reply = await self._nc.request(self.subject, body, timeout=timeout, headers=headers)
                return json.loads(reply.data)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if attempt == 5:
                    raise NoAnswer(f"no ledger answered {self.subject} after {attempt} tries; send the same events again later") from None
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    def envelope(self, event: Event) -> bytes:
        """The signed envelope of `event`, as sent."""
        return envelope.sign(self.key, event.payload(self.key.public_key))

    async def submit(self, event: Event) -> Union[Receipt, Queued]:
        """Submits `event`; its receipt (or an edge's acknowledgement).
        Raises `Refused` with the ledger's code when it is refused."""
        result = outcome(await self._request(self.envelope(event), None, self.timeout))
        if isinstance(result, Refused):
            raise result
        return result

    async def submit_batch(self, events: Sequence[Event]) -> List[Outcome]:
        """Submits up to 1,000 events in one request; each one's outcome, in
        order (a refusal is returned, not raised: the others stand)."""
        if not events:
            return []
        if len(events) > BATCH_MAX:
            raise ValueError(f"a batch holds at most {BATCH_MAX} events; this one has {len(events)}")
        body = b"\n".join(self.envelope(e) for e in events)
        answer = await self._request(body, {"Custody-Batch": "ndjson"}, self.timeout * 3)
        if isinstance(answer, list):
            return [outcome(a) for a in answer]
        return [outcome(answer)] * len(events)
