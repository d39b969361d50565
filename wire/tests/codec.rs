//! Property tests: encode→decode round trips for every message, and arbitrary
//! bytes that never panic a decoder and, when they do decode, re-encode to the
//! very same bytes (the encoding is canonical).

use proptest::prelude::*;
use trex_wire::*;

fn status() -> impl Strategy<Value = Status> {
    (0u8..11).prop_map(|b| Status::from_u8(b).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn header_round_trips(opcode: u8, resp: bool, err: bool, request_id: u64, epoch: u64, cluster_id: u32,
                          body_len in 0..=MAX_BODY_LEN, body_crc: u32) {
        let flags = if resp { FLAG_RESPONSE } else { 0 } | if err { FLAG_ERROR } else { 0 };
        let h = Header { opcode, flags, request_id, epoch, cluster_id, body_len, body_crc };
        prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn write_requests_round_trip(ops in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>(),
                                  proptest::collection::vec(any::<u8>(), 0..64)), 0..20)) {
        let w: Vec<WriteOp<'_>> = ops.iter().map(|(a, wr, s, d)| WriteOp { addr: *a, writer: *wr, seq: *s, data: d }).collect();
        let mut buf = Vec::new();
        encode_write_request(&mut buf, &w);
        let got: Vec<WriteOp<'_>> = decode_write_request(&buf).unwrap().iter().collect();
        prop_assert_eq!(got, w);
        // Every strict prefix is an error, never a panic or a shorter batch.
        for cut in 0..buf.len() {
            prop_assert!(decode_write_request(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn lists_round_trip(addrs in proptest::collection::vec(any::<u64>(), 0..50),
                        sts in proptest::collection::vec(status(), 0..50)) {
        let mut a = Vec::new();
        encode_addr_list(&mut a, &addrs);
        prop_assert_eq!(decode_addr_list(&a).unwrap().iter().collect::<Vec<_>>(), addrs);
        let mut s = Vec::new();
        encode_status_list(&mut s, &sts);
        prop_assert_eq!(decode_status_list(&s).unwrap().iter().collect::<Vec<_>>(), sts);
    }

    #[test]
    fn read_replies_round_trip(items in proptest::collection::vec((any::<u64>(), status(), any::<u64>(), any::<u64>(),
                               proptest::collection::vec(any::<u8>(), 0..40)), 0..20)) {
        let mut buf = Vec::new();
        let mut b = ReadReplyBuilder::begin(&mut buf);
        for (addr, st, writer, seq, data) in &items {
            if *st == Status::Ok {
                b.entry(&mut buf, *addr, Entry { writer: *writer, seq: *seq, data });
            } else {
                b.status(&mut buf, *addr, *st);
            }
        }
        b.finish(&mut buf);
        let got: Vec<ReadResult<'_>> = decode_read_reply(&buf).unwrap().iter().collect();
        prop_assert_eq!(got.len(), items.len());
        for (g, (addr, st, writer, seq, data)) in got.iter().zip(&items) {
            prop_assert_eq!((g.addr, g.status), (*addr, *st));
            if *st == Status::Ok {
                prop_assert_eq!(g.entry, Some(Entry { writer: *writer, seq: *seq, data }));
            } else {
                prop_assert_eq!(g.entry, None);
            }
        }
    }

    #[test]
    fn small_messages_round_trip(a: u64, b: u64, c: u64, sealed: bool, code: u16, msg in ".{0,80}") {
        let mut buf = Vec::new();
        encode_seal_reply(&mut buf, &SealReply { sealed, sealed_epoch: a, tail: b });
        prop_assert_eq!(decode_seal_reply(&buf).unwrap(), SealReply { sealed, sealed_epoch: a, tail: b });
        let info = InfoReply { sealed_epoch: a, trim_mark: b, tail: c, entries: a ^ b, junk: 1, corrupt: 2,
                               segments: 3, flags: 4, segment_size_bytes: 5, used_bytes: c };
        let mut buf = Vec::new();
        encode_info_reply(&mut buf, &info);
        prop_assert_eq!(buf.len(), INFO_REPLY_LEN);
        prop_assert_eq!(decode_info_reply(&buf).unwrap(), info);
        let mut buf = Vec::new();
        encode_error(&mut buf, code, &msg);
        let e = decode_error(&buf).unwrap();
        prop_assert_eq!((e.code, e.message.as_ref()), (code, msg.as_str()));
    }

    #[test]
    fn arbitrary_frames_never_panic_and_what_parses_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(Some(n)) = check_frame(&bytes) {
            let f = parse_frame(&bytes[..n]);
            if let Ok(Some(f)) = f {
                let mut again = Vec::new();
                let s = begin_frame(&mut again);
                again.extend_from_slice(f.body);
                finish_frame(&mut again, s, f.header);
                prop_assert_eq!(&again[..], &bytes[..n]);
            }
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic_and_what_decodes_re_encodes_identically(
        op in 0u8..10, bytes in proptest::collection::vec(any::<u8>(), 0..120)
    ) {
        if let Ok(req) = decode_request(op, &bytes) {
            let mut again = Vec::new();
            match req {
                Request::Write(w) | Request::Repair(w) | Request::VerifiedRepair(w) => encode_write_request(&mut again, &w.iter().collect::<Vec<_>>()),
                Request::Read(a) | Request::Fill(a) => encode_addr_list(&mut again, &a.iter().collect::<Vec<_>>()),
                Request::Trim { prefix } => encode_u64(&mut again, prefix),
                Request::Seal { epoch } => encode_u64(&mut again, epoch),
                Request::Info => {}
            }
            prop_assert_eq!(again, bytes.clone());
        }
        if let Ok(r) = decode_read_reply(&bytes) {
            let mut again = Vec::new();
            let mut b = ReadReplyBuilder::begin(&mut again);
            for x in r.iter() {
                match x.entry {
                    Some(e) => b.entry(&mut again, x.addr, e),
                    None => b.status(&mut again, x.addr, x.status),
                }
            }
            b.finish(&mut again);
            prop_assert_eq!(again, bytes.clone());
        }
        let _ = decode_status_list(&bytes);
        let _ = decode_seal_reply(&bytes);
        let _ = decode_info_reply(&bytes);
        let _ = decode_error(&bytes);
    }

    #[test]
    fn huge_counts_are_refused_before_allocating(count in (MAX_OPS_PER_FRAME + 1)..=u32::MAX) {
        let bytes = count.to_le_bytes();
        let too_many = matches!(decode_write_request(&bytes), Err(DecodeError::TooManyOps { .. }));
        prop_assert!(too_many);
        let too_many = matches!(decode_read_reply(&bytes), Err(DecodeError::TooManyOps { .. }));
        prop_assert!(too_many);
    }
}

#[test]
fn an_incomplete_frame_is_not_an_error() {
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    encode_addr_list(&mut f, &[1, 2, 3]);
    finish_frame(
        &mut f,
        s,
        Header {
            opcode: Opcode::Read as u8,
            ..Header::default()
        },
    );
    for cut in 0..f.len() {
        assert_eq!(check_frame(&f[..cut]), Ok(None), "prefix of {cut} bytes");
    }
    assert_eq!(check_frame(&f), Ok(Some(f.len())));
    assert!(matches!(
        check_frame(b"GET /"),
        Err(FrameError::BadMagic(_))
    ));
}
