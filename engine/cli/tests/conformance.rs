//! The golden storage session of `docs/wire.md` ("Golden vectors") replayed
//! against a real `trex node storage`: the test establishes the session's stated
//! preconditions, sends every request vector exactly as the document spells it,
//! and compares every reply the unit sends with the document's reply vector,
//! byte for byte and unmasked. A client written from the document alone sees
//! exactly these bytes.

#[path = "../../../wire/tests/support/doc_vectors.rs"]
mod doc_vectors;

mod common;

use common::UnitProcess;
use doc_vectors::{documented, hex};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use trex_net::unit_client::{UnitApi, UnitClient};
use trex_wire::{self as wire, Status, WriteOp, HEADER_LEN};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The session, in order: (request vector, reply vector).
const SESSION: [(&str, &str); 7] = [
    ("write-request", "write-reply"),
    ("read-request", "read-reply"),
    ("fill-request", "fill-reply"),
    ("trim-request", "trim-reply"),
    ("seal-request", "seal-reply"),
    ("info-request", "info-reply"),
    ("stale-write-request", "error-reply"),
];

fn vector<'a>(doc: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &doc.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("docs/wire.md lacks the vector '{name}'"))
        .1
}

/// Reads one whole frame, exactly as it came off the socket.
fn read_raw_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN];
    s.read_exact(&mut f).expect("a reply header");
    let body_len = u32::from_le_bytes(f[28..32].try_into().unwrap()) as usize;
    assert!(
        body_len <= wire::MAX_BODY_LEN as usize,
        "reply body_len {body_len}"
    );
    f.resize(HEADER_LEN + body_len, 0);
    s.read_exact(&mut f[HEADER_LEN..]).expect("a reply body");
    f
}

#[test]
fn the_golden_storage_session_is_what_a_real_unit_answers() {
    let doc = documented();
    let dir = tempfile::tempdir().unwrap();
    // Preconditions (docs/wire.md, "Golden vectors"): a fresh unit with the
    // default 64 MiB segments and its syncs on a sync thread (so `info` flags
    // are 0 on every machine), sealed at epoch 3, address 0x11 holding
    // {writer 8, seq 1, "x"}, and nothing else stored.
    let unit = UnitProcess::start_with_env(
        dir.path(),
        &["--segment-size", "64MiB"],
        &[("TREX_SYNC_BACKEND", "thread")],
    );
    {
        let mut c = UnitClient::connect(&unit.addr, TIMEOUT).unwrap();
        let sealed = c.seal(3).unwrap();
        assert!(sealed.sealed && sealed.sealed_epoch == 3 && sealed.tail == 0);
        let other = [WriteOp {
            addr: 0x11,
            writer: 8,
            seq: 1,
            data: b"x",
        }];
        assert_eq!(c.write(3, &other).unwrap(), vec![Status::Ok]);
        let info = c.info().unwrap();
        assert_eq!(
            (
                info.sealed_epoch,
                info.trim_mark,
                info.tail,
                info.entries,
                info.junk
            ),
            (3, 0, 0x12, 1, 0),
            "the preconditions hold before request 1"
        );
    }

    // The session: one connection, one request at a time, every byte compared.
    let mut s = TcpStream::connect(&unit.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut differ = Vec::new();
    for (request, reply) in SESSION {
        s.write_all(vector(&doc, request)).unwrap();
        let got = read_raw_frame(&mut s);
        if got != vector(&doc, reply) {
            differ.push(format!(
                "after '{request}' the unit answered\n{}\nbut docs/wire.md '{reply}' is\n{}",
                hex(&got),
                hex(vector(&doc, reply))
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n\n"));
    // `sealed-epoch` leaves the connection open: request 8, an `info`, is
    // answered on it with the state the session's `info-reply` reported.
    let mut f = Vec::new();
    let start = wire::begin_frame(&mut f);
    wire::finish_frame(
        &mut f,
        start,
        wire::Header {
            opcode: wire::Opcode::Info as u8,
            request_id: 8,
            ..wire::Header::default()
        },
    );
    s.write_all(&f).unwrap();
    let again = read_raw_frame(&mut s);
    let again = wire::parse_frame(&again).unwrap().unwrap();
    assert_eq!(again.header.request_id, 8);
    assert!(!again.header.is_error());
    let info_reply = vector(&doc, "info-reply");
    assert_eq!(again.body, &info_reply[HEADER_LEN..]);
}
