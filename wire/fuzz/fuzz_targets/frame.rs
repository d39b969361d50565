//! Fuzzes the frame decoder and every body decoder. Beyond "no panic": whatever
//! decodes must re-encode to exactly the same bytes, and a frame that parses
//! must be the length `check_frame` said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trex_wire::*;

fuzz_target!(|data: &[u8]| {
    match check_frame(data) {
        Ok(Some(n)) => {
            assert!(n >= HEADER_LEN && n <= data.len());
            if let Ok(Some(f)) = parse_frame(data) {
                assert_eq!(HEADER_LEN + f.body.len(), n);
                let mut again = Vec::new();
                let s = begin_frame(&mut again);
                again.extend_from_slice(f.body);
                finish_frame(&mut again, s, f.header);
                assert_eq!(&again[..], &data[..n]);
                if let Ok(req) = decode_request(f.header.opcode, f.body) {
                    let mut body = Vec::new();
                    match req {
                        Request::Write(w) | Request::Repair(w) | Request::VerifiedRepair(w) => {
                            encode_write_request(&mut body, &w.iter().collect::<Vec<_>>())
                        }
                        Request::Read(a) | Request::Fill(a) => {
                            encode_addr_list(&mut body, &a.iter().collect::<Vec<_>>())
                        }
                        Request::Trim { prefix } => encode_u64(&mut body, prefix),
                        Request::Seal { epoch } => encode_u64(&mut body, epoch),
                        Request::Info => {}
                    }
                    assert_eq!(body, f.body);
                }
            }
        }
        Ok(None) | Err(_) => {}
    }
    let _ = decode_read_reply(data);
    let _ = decode_status_list(data);
    let _ = decode_info_reply(data);
    let _ = decode_seal_reply(data);
    let _ = decode_error(data);
});
