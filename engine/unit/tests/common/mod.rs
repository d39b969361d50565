//! Helpers shared by the unit's integration tests: drive a unit in-process.
#![allow(dead_code)]

use trex_unit::storage::Store;
use trex_unit::unit::{Reply, Unit};
use trex_wire::{self as wire, begin_frame, finish_frame, ErrorCode, Header, Opcode, WriteOp};

pub fn send<S: Store>(
    u: &mut Unit<S>,
    id: u64,
    op: Opcode,
    epoch: u64,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    body(&mut f);
    finish_frame(
        &mut f,
        s,
        Header {
            opcode: op as u8,
            request_id: id,
            epoch,
            ..Header::default()
        },
    );
    let fr = wire::parse_frame(&f).unwrap().unwrap();
    u.on_frame(id, &fr.header, fr.body);
}

pub fn write<S: Store>(u: &mut Unit<S>, id: u64, addr: u64, data: &[u8]) {
    let op = WriteOp {
        addr,
        writer: 1,
        seq: addr,
        data,
    };
    send(u, id, Opcode::Write, 0, |b| {
        wire::encode_write_request(b, &[op])
    });
}

pub fn replies<S: Store>(u: &mut Unit<S>) -> Vec<Reply> {
    std::iter::from_fn(|| u.poll_reply()).collect()
}

/// Runs every due sync to completion, doing the real I/O for disk stores.
pub fn sync<S: Store>(u: &mut Unit<S>) {
    while let Some(job) = u.poll_sync() {
        for f in &job.files {
            f.sync_data().expect("fdatasync");
        }
        u.on_synced(job.lsn, Ok(()));
    }
}

/// Reads `addrs` (request `id`, epoch 0), runs the syncs it waits on, and
/// returns the status of each address.
pub fn read_statuses<S: Store>(u: &mut Unit<S>, id: u64, addrs: &[u64]) -> Vec<wire::Status> {
    send(u, id, Opcode::Read, 0, |b| wire::encode_addr_list(b, addrs));
    sync(u);
    let r = replies(u).pop().expect("a read reply");
    let f = wire::parse_frame(&r.frame).unwrap().unwrap();
    wire::decode_read_reply(f.body)
        .unwrap()
        .iter()
        .map(|x| x.status)
        .collect()
}

pub fn error_code(r: &Reply) -> Option<ErrorCode> {
    let f = wire::parse_frame(&r.frame).unwrap().unwrap();
    f.header
        .is_error()
        .then(|| ErrorCode::from_u16(wire::decode_error(f.body).unwrap().code).unwrap())
}

/// A small deterministic PRNG (xorshift64*), seeded per test and printed.
pub struct Rng(pub u64);

impl Rng {
    pub fn from_time() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
