//! Fuzzes the segment record decoder used by recovery scans: it never panics,
//! and a record it accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trex_engine::storage::record::{decode_record, encode_record, record_size};

fuzz_target!(|data: &[u8]| {
    let nonce = 0x5eed;
    if let Ok((head, payload, size)) = decode_record(data, nonce, 1 << 20) {
        assert_eq!(size, record_size(payload.len()));
        let mut again = vec![0u8; size];
        encode_record(&mut again, nonce, &head, payload);
        assert_eq!(&again[..40 + payload.len()], &data[..40 + payload.len()]);
    }
});
