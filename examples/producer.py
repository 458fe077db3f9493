#!/usr/bin/env python3
"""A custody producer in Python, with the custody-client package
(`pip install ./clients/python`): proof that the contract is
language-neutral.

It reads an actor's nkey seed (the `SU...` file `custody keygen` writes),
submits a `mined` event signed into a DSSE envelope, connected to NATS as
that actor, and prints the ledger's answer: a receipt {"id", "seq",
"hash", "recorded_at"} or a refusal {"id", "code", "message"}. Exit status
0 for a receipt, 1 for a refusal, 2 when it could not ask (with a sentence
saying why, never a traceback).

    CUSTODY_NATS=nats://127.0.0.1:4222 python3 producer.py KEYFILE LOT CARATS COUNTRY

With `--batch N` it records N lots (LOT-1 .. LOT-N, CARATS each) in one
batch request instead and prints every outcome, in order; exit status 0 if
every one was receipted. At a mine's edge the answer is the edge's
acknowledgement {"stream", "seq"}: the receipt follows once the link is up.
"""

import asyncio
import dataclasses
import json
import os
import sys

from custody_client import CustodyError, Mined, Producer, Queued, Refused


def line(outcome) -> dict:
    if isinstance(outcome, Refused):
        return {"id": outcome.id, "code": outcome.code, "message": outcome.message}
    return dataclasses.asdict(outcome)


async def main(args) -> int:
    batch = None
    if len(args) == 6 and args[4] == "--batch" and args[5].isdigit():
        batch, args = int(args[5]), args[:4]
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    key_file, lot, carats, country = args
    url = os.environ.get("CUSTODY_NATS", "nats://127.0.0.1:4222")
    async with await Producer.connect(url, key_file) as p:
        if batch is None:
            try:
                print(json.dumps(line(await p.submit(Mined(lot=lot, carats=carats, country=country, id=f"py-{lot}")))))
                return 0
            except Refused as r:
                print(json.dumps(line(r)))
                return 1
        events = [Mined(lot=f"{lot}-{i}", carats=carats, country=country, id=f"py-{lot}-{i}") for i in range(1, batch + 1)]
        outcomes = await p.submit_batch(events)
        print(json.dumps([line(o) for o in outcomes]))
        return 0 if all(not isinstance(o, Refused) for o in outcomes) else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(sys.argv[1:])))
    except CustodyError as e:
        print(f"producer.py: {e}", file=sys.stderr)
        sys.exit(2)
