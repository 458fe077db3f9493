#!/usr/bin/env python3
"""A custody producer in Python: proof that the contract is language-neutral.

It reads an actor's nkey seed (the `SU...` file `custody keygen` writes),
builds a `mined` event, signs it into a DSSE envelope (ed25519 over the
PAE), connects to NATS as that actor (nkey authentication, replies on its
own `_INBOX_<key>` prefix, as a server under custody's authorization
requires), submits it over request-reply and prints the ledger's answer:
a receipt {"id", "seq", "hash", "recorded_at"} or a refusal {"id", "code",
"message"}. Exit status 0 for a receipt, 1 for a refusal.

    CUSTODY_NATS=nats://127.0.0.1:4222 python3 producer.py KEYFILE LOT CARATS COUNTRY

With `--batch N` it records N lots (LOT-1 .. LOT-N, CARATS each) in one
batch request instead: the envelopes one per line, with the header
`Custody-Batch: ndjson`; the ledger answers a JSON array with each
envelope's outcome, in order, exactly as if each had been sent alone. It
prints the array; exit status 0 if every one was receipted. This is for
bulk loads: a cutting centre's day of output, historical stock.

At a mine's edge (`custody edge`, CUSTODY_NATS pointing at it) the same
script works unchanged: the answer is then the edge's acknowledgement
{"stream": "CUSTODY_OUTBOX", "seq", "domain"}, meaning the envelope (or
the batch) is on the edge's disk; the ledger's receipt follows once the
link is up (`custody edge receipts`).
"""

import asyncio
import base64
import datetime
import json
import os
import sys

import nats
import nats.errors
from nacl.signing import SigningKey

PAYLOAD_TYPE = "application/vnd.custody.event+json"
PREFIX_SEED = 18 << 3  # nkeys: 'S'
PREFIX_USER = 20 << 3  # nkeys: 'U'


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum nkeys appends."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def b32decode(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


def load_seed(path: str) -> SigningKey:
    """An nkey seed: 2 prefix bytes, 32 seed bytes, CRC-16 little-endian."""
    raw = b32decode(open(path).read().strip())
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if crc16(body) != crc:
        raise SystemExit(f"{path}: checksum mismatch; not an nkey seed")
    if body[0] & 0xF8 != PREFIX_SEED or ((body[0] & 7) << 5 | body[1] >> 3) != PREFIX_USER:
        raise SystemExit(f"{path}: not a user seed (SU...)")
    return SigningKey(body[2:34])


def public_nkey(key: SigningKey) -> str:
    body = bytes([PREFIX_USER]) + bytes(key.verify_key)
    raw = body + crc16(body).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    return b"DSSEv1 %d %s %d " % (len(payload_type), payload_type.encode(), len(payload)) + payload


def envelope(key: SigningKey, event: dict) -> bytes:
    payload = json.dumps(event, separators=(",", ":")).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload)).signature
    return json.dumps({
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": public_nkey(key), "sig": base64.b64encode(sig).decode()}],
    }).encode()


def mined(actor: str, lot: str, carats: str, country: str) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {
        "id": f"py-{lot}",
        "kind": "mined",
        "actor": actor,
        "occurred_at": now.isoformat().replace("+00:00", "Z"),
        "lot": lot,
        "carats": carats,
        "country": country,
    }


async def request_again(nc, subject, body, headers, timeout, attempts=5):
    """Sends the same bytes again while no answer comes: a request caught by
    a ledger replica that stopped being the writer is never answered, and
    the ledger answers a repeated envelope with its first outcome."""
    for attempt in range(1, attempts + 1):
        try:
            return await nc.request(subject, body, timeout=timeout, headers=headers)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if attempt == attempts:
                raise
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))


async def main() -> int:
    args = sys.argv[1:]
    batch = None
    if len(args) == 6 and args[4] == "--batch" and args[5].isdigit():
        batch = int(args[5])
        args = args[:4]
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    key_file, lot, carats, country = args
    key = load_seed(key_file)
    actor = public_nkey(key)
    # Connect as the actor itself: the server admits registered keys only,
    # and lets each read replies on its own inbox prefix only.
    with open(key_file) as f:
        seed = f.read().strip()
    nc = await nats.connect(
        os.environ.get("CUSTODY_NATS", "nats://127.0.0.1:4222"),
        nkeys_seed_str=seed,
        inbox_prefix=f"_INBOX_{actor}",
        allow_reconnect=False,
    )
    subject = f"custody.submit.{actor}"
    try:
        if batch is None:
            body, headers, timeout = envelope(key, mined(actor, lot, carats, country)), None, 10
        else:
            lines = [envelope(key, mined(actor, f"{lot}-{i}", carats, country)) for i in range(1, batch + 1)]
            body, headers, timeout = b"\n".join(lines), {"Custody-Batch": "ndjson"}, 30
        reply = await request_again(nc, subject, body, headers, timeout)
    finally:
        await nc.close()
    answer = json.loads(reply.data)
    print(json.dumps(answer))
    if batch is None:
        return 0 if "seq" in answer else 1
    return 0 if isinstance(answer, list) and all("seq" in a for a in answer) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
