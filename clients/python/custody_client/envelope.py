"""DSSE envelopes: what the ledger takes (DOMAIN.md, "Submission format")."""

from __future__ import annotations

import base64
import json
from typing import Any, Dict

from .keys import Key

PAYLOAD_TYPE = "application/vnd.custody.event+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    return b"DSSEv1 %d %s %d " % (len(payload_type), payload_type.encode(), len(payload)) + payload


def sign(key: Key, payload: Dict[str, Any]) -> bytes:
    """The envelope of `payload` signed by `key`, as bytes to send."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    signature = key.sign(pae(PAYLOAD_TYPE, body))
    return json.dumps(
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(body).decode(),
            "signatures": [{"keyid": key.public_key, "sig": base64.b64encode(signature).decode()}],
        },
        separators=(",", ":"),
    ).encode()
