"""Submit signed custody events to a custody ledger over NATS.

    async with await Producer.connect("nats://127.0.0.1:4222", "miner.nk") as p:
        receipt = await p.submit(Mined(lot="JW-100", carats="12.40", country="BW"))
"""

from .envelope import PAYLOAD_TYPE, pae, sign
from .errors import BadKeyFile, CustodyError, NoAnswer, NotRegistered, Refused, Unreachable
from .events import (
    KINDS,
    Certificate,
    CountryShare,
    Declared,
    Event,
    Exported,
    Flagged,
    Imported,
    Merged,
    Mined,
    Portion,
    Processed,
    Split,
    Transferred,
    Verified,
)
from .keys import Key
from .producer import Producer, Queued, Receipt

__all__ = [
    "PAYLOAD_TYPE", "pae", "sign", "BadKeyFile", "CustodyError", "NoAnswer", "NotRegistered", "Refused", "Unreachable",
    "KINDS", "Certificate", "CountryShare", "Declared", "Event", "Exported", "Flagged", "Imported", "Merged", "Mined",
    "Portion", "Processed", "Split", "Transferred", "Verified", "Key", "Producer", "Queued", "Receipt",
]
