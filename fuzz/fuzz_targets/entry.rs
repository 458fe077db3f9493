//! Any bytes as a stored or streamed entry: decoding fails cleanly, or
//! gives an entry that survives its own encoding unchanged (so a
//! non-canonical form can never hide behind a good hash check).
#![no_main]

use custody_proto::Entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::decode(7, data) {
        let again = Entry::decode(7, &entry.encode()).expect("an encoded entry decodes");
        assert_eq!(again, entry, "decode(encode(e)) == e");
        assert_eq!(
            again.check_after(Some((entry.seq.wrapping_sub(1), entry.prev_hash))).is_ok(),
            entry.check_after(Some((entry.seq.wrapping_sub(1), entry.prev_hash))).is_ok()
        );
    }
});
