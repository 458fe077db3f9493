"""`custody-produce KEYFILE KIND --field value ...`: one event from the
command line; the receipt as JSON on stdout. Exit 0 recorded, 1 refused,
2 anything else, always with a sentence, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from typing import List, Optional

from .errors import CustodyError, Refused
from .events import KINDS, Certificate, CountryShare, Portion
from .producer import Producer


def _portions(text: str) -> List[Portion]:
    return [Portion(*map(str.strip, item.rsplit(":", 1))) for item in text.split(";") if item.strip()]


def _build(kind: str, values: dict):
    cls = KINDS[kind]
    args = {}
    for f in dataclasses.fields(cls):
        v = values.get(f.name)
        if v is None:
            continue
        if f.name == "into":
            items = _portions(v)
            args[f.name] = items[0] if kind == "merged" else items
        elif f.name in ("lots",):
            args[f.name] = [x.strip() for x in v.split(";") if x.strip()]
        elif f.name == "certificate" and kind == "exported":
            number, value = v.split(":", 1)
            args[f.name] = Certificate(number.strip(), value.strip())
        elif f.name == "origin" and v != "unknown":
            args[f.name] = [CountryShare(*map(str.strip, x.rsplit(":", 1))) for x in v.split(";") if x.strip()]
        else:
            args[f.name] = v
    return cls(**args)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="custody-produce", description=__doc__)
    parser.add_argument("key_file", help="the actor's seed file (custody keygen --out FILE)")
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--nats", default=os.environ.get("CUSTODY_NATS", "nats://127.0.0.1:4222"))
    names = sorted({f.name for cls in KINDS.values() for f in dataclasses.fields(cls)})
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help="lists: a; b; new lots: LOT:CARATS; an export's certificate: NUMBER:VALUE_USD")
    args = parser.parse_args(argv)
    values = {n: getattr(args, n) for n in names}
    try:
        event = _build(args.kind, values)
    except (TypeError, ValueError) as e:
        print(f"custody-produce: {args.kind}: {e}", file=sys.stderr)
        return 2

    async def run() -> int:
        async with await Producer.connect(args.nats, args.key_file) as p:
            receipt = await p.submit(event)
            print(json.dumps(dataclasses.asdict(receipt)))
            return 0

    try:
        return asyncio.run(run())
    except Refused as r:
        print(json.dumps({"id": r.id, "code": r.code, "message": r.message}))
        print(f"custody-produce: {r}", file=sys.stderr)
        return 1
    except CustodyError as e:
        print(f"custody-produce: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
