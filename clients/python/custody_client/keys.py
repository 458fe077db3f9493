"""An actor's key: the nkey seed file `custody keygen` writes (`SU...`)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import nkeys

from .errors import BadKeyFile


class Key:
    """An actor's signing key, which is also its NATS login."""

    def __init__(self, seed: str, source: str = "the seed"):
        seed = seed.strip()
        if not seed.startswith("SU"):
            raise BadKeyFile(f"{source} is not an actor's key: an actor's seed starts with SU (custody keygen --out FILE writes one)")
        try:
            self._pair = nkeys.from_seed(seed.encode())
        except Exception as e:  # nkeys raises its own errors for a bad checksum or length
            raise BadKeyFile(f"{source} starts like an nkey seed but is not one ({e})") from None
        self.seed = seed
        self.public_key: str = self._pair.public_key.decode()

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Key":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise BadKeyFile(f"cannot read the key file {path}: {e.strerror or e}") from None
        return cls(text, source=str(path))

    def sign(self, data: bytes) -> bytes:
        return self._pair.sign(data)
