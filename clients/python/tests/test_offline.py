"""What custody-client does without a server: keys, payloads, envelopes."""

import base64
import datetime
import json
import os
import tempfile
import unittest

import nkeys
from nacl.signing import VerifyKey

from custody_client import BadKeyFile, Certificate, Exported, Key, Mined, Portion, Split, pae, sign, PAYLOAD_TYPE

# A user seed made for these tests (nkeys' own test vectors use this form).
SEED = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"


def public_bytes(public_key: str) -> bytes:
    raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    return raw[1:33]


class Keys(unittest.TestCase):
    def test_a_seed_file_gives_its_public_key(self):
        with tempfile.NamedTemporaryFile("w", suffix=".nk", delete=False) as f:
            f.write(SEED + "\n")
        key = Key.load(f.name)
        os.unlink(f.name)
        self.assertEqual(key.public_key, nkeys.from_seed(SEED.encode()).public_key.decode())
        self.assertTrue(key.public_key.startswith("U"))

    def test_what_is_not_an_actor_seed_is_refused_in_words(self):
        for text, words in [("UABC", "starts with SU"), ("SUAAAA", "not one"), ("", "starts with SU")]:
            with self.assertRaises(BadKeyFile) as e:
                Key(text, source="miner.nk")
            self.assertIn(words, str(e.exception))
        with self.assertRaises(BadKeyFile) as e:
            Key.load("/nonexistent/miner.nk")
        self.assertIn("cannot read the key file", str(e.exception))


class Payloads(unittest.TestCase):
    def test_each_kind_has_the_domain_shape(self):
        e = Exported(lots=["A", "B"], to="UBUYER", to_country="IN", certificate=Certificate("BW-1", "100.00"), occurred_at=datetime.date(2026, 11, 30))
        p = e.payload("UACTOR")
        self.assertEqual(p["kind"], "exported")
        self.assertEqual(p["certificate"], {"number": "BW-1", "value_usd": "100.00"})
        self.assertEqual(p["occurred_at"], "2026-11-30T00:00:00Z")
        s = Split(lot="A", into=[Portion("A1", "1.00"), Portion("A2", "0.50")], id="s-1").payload("UACTOR")
        self.assertEqual(s["into"], [{"lot": "A1", "carats": "1.00"}, {"lot": "A2", "carats": "0.50"}])
        self.assertEqual(s["id"], "s-1")
        self.assertNotIn("mine", Mined(lot="L", carats="1.00", country="BW").payload("U"))

    def test_the_same_event_has_the_same_id(self):
        day = datetime.date(2026, 11, 30)
        a = Mined(lot="L", carats="1.00", country="BW", occurred_at=day).payload("U")
        b = Mined(lot="L", carats="1.00", country="BW", occurred_at=day).payload("U")
        c = Mined(lot="L2", carats="1.00", country="BW", occurred_at=day).payload("U")
        self.assertEqual(a["id"], b["id"])
        self.assertNotEqual(a["id"], c["id"])

    def test_a_time_without_a_zone_is_refused(self):
        with self.assertRaises(ValueError):
            Mined(lot="L", carats="1.00", country="BW", occurred_at=datetime.datetime(2026, 11, 30, 8)).payload("U")


class Envelopes(unittest.TestCase):
    def test_the_signature_covers_the_pae_under_the_actors_key(self):
        key = Key(SEED)
        env = json.loads(sign(key, Mined(lot="L", carats="1.00", country="BW").payload(key.public_key)))
        self.assertEqual(env["payloadType"], PAYLOAD_TYPE)
        self.assertEqual(env["signatures"][0]["keyid"], key.public_key)
        payload = base64.b64decode(env["payload"])
        VerifyKey(public_bytes(key.public_key)).verify(pae(PAYLOAD_TYPE, payload), base64.b64decode(env["signatures"][0]["sig"]))
        self.assertEqual(json.loads(payload)["actor"], key.public_key)


if __name__ == "__main__":
    unittest.main()
