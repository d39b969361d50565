//! A blocking client for one storage unit (what the `trex unit` commands and the
//! tests use), and the unit's typed operations ([`UnitApi`]) over any
//! request/reply channel.

use crate::conn::{read_frame, ConnectError, ReadFrameError};
use crate::tls::ClientStream;
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use thiserror::Error;
use trex_wire::{
    self as wire, begin_frame, finish_frame, ErrorCode, Header, InfoReply, NodeInfo, Opcode,
    SealReply, Status, WriteOp,
};

/// Why a call failed.
#[derive(Clone, Debug, Error)]
pub enum ClientError {
    /// Could not connect or the connection failed.
    #[error("{0}")]
    Io(String),
    /// The address does not resolve: fix it (a usage problem, no retry helps).
    #[error("{0}")]
    Address(String),
    /// TLS failed on a certificate (this one refused by the server, or the
    /// server's not signed by the cluster CA for this address): fix the
    /// certificates or the TLS options; no retry helps.
    #[error("{0}")]
    Tls(String),
    /// No reply within the timeout; the outcome is unknown.
    #[error(
        "no reply from {addr} within {}; the request may or may not have taken effect",
        crate::util::duration_text(*.timeout)
    )]
    Timeout {
        /// The server.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The server refused the whole request.
    #[error("{name}: {message}")]
    Server {
        /// Raw error code.
        code: u16,
        /// Its name.
        name: &'static str,
        /// The server's explanation.
        message: String,
        /// The epoch in the reply header (the unit's sealed epoch).
        epoch: u64,
    },
    /// The reply did not make sense.
    #[error("bad reply from server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }

    /// The server is alive but refused the connection (at its connection
    /// limit): not a failure to act on by taking it out of the layout.
    pub fn is_busy(&self) -> bool {
        self.code() == Some(ErrorCode::TooManyConnections)
    }
}

/// One read result, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadItem {
    /// Address.
    pub addr: u64,
    /// Outcome.
    pub status: Status,
    /// Writer id (when `Ok`).
    pub writer: u64,
    /// Writer sequence number (when `Ok`).
    pub seq: u64,
    /// The bytes (when `Ok`).
    pub data: Vec<u8>,
}

/// A blocking connection to one storage unit.
pub struct UnitClient {
    stream: ClientStream,
    addr: SocketAddr,
    timeout: Duration,
    /// Requests sent and not yet answered.
    outstanding: HashSet<u64>,
    /// Replies that arrived before the one being waited for (a unit answers a
    /// refusal or a read at once, while earlier writes wait for their sync).
    early: HashMap<u64, (Header, Vec<u8>)>,
    /// Cluster id put in every frame.
    pub cluster_id: u32,
    buf: Vec<u8>,
}

/// Request ids are unique in the process, not per connection: a reply read on
/// a new connection can never be taken for the answer to a request sent on an
/// old one.
static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

impl UnitClient {
    /// Connects to `addr` (host:port).
    pub fn connect(addr: &str, timeout: Duration) -> Result<UnitClient, ClientError> {
        UnitClient::open(
            addr,
            timeout,
            "is a storage unit listening there? (start one with `trex node storage`)",
        )
    }

    /// Connects to `addr`; `hint` follows the reason if nothing listens there.
    fn open(addr: &str, timeout: Duration, hint: &str) -> Result<UnitClient, ClientError> {
        let (stream, addr) = crate::conn::connect(addr, timeout).map_err(|e| match e {
            ConnectError::Refused { .. } => ClientError::Io(format!("{e}; {hint}")),
            ConnectError::Tls { .. } => ClientError::Tls(e.to_string()),
            ConnectError::Resolve { .. } => ClientError::Address(e.to_string()),
        })?;
        Ok(UnitClient {
            stream,
            addr,
            timeout,
            outstanding: HashSet::new(),
            early: HashMap::new(),
            cluster_id: 0,
            buf: Vec::new(),
        })
    }

    /// Sends one request frame; returns its request id (see [`UnitClient::recv`]).
    pub fn send(
        &mut self,
        op: Opcode,
        epoch: u64,
        body: &dyn Fn(&mut Vec<u8>),
    ) -> Result<u64, ClientError> {
        let id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
        let mut frame = std::mem::take(&mut self.buf);
        frame.clear();
        let start = begin_frame(&mut frame);
        body(&mut frame);
        let header = Header {
            opcode: op as u8,
            request_id: id,
            epoch,
            cluster_id: self.cluster_id,
            ..Header::default()
        };
        finish_frame(&mut frame, start, header);
        let sent = self.stream.write_all(&frame);
        self.buf = frame;
        sent.map_err(|e| self.io_error(e))?;
        self.outstanding.insert(id);
        Ok(id)
    }

    /// Waits for the reply to request `id`. Replies to other requests still
    /// outstanding on this connection are kept for their own `recv`; replies to
    /// requests nobody waits for any more are skipped. A frame with request id 0
    /// (a connection-level error) answers whoever is waiting.
    pub fn recv(&mut self, id: u64) -> Result<(Header, Vec<u8>), ClientError> {
        if let Some((h, body)) = self.early.remove(&id) {
            self.outstanding.remove(&id);
            return reply_or_error(h, body);
        }
        if !self.outstanding.contains(&id) {
            return Err(ClientError::Protocol(format!(
                "request {id} was not sent on this connection (or was answered already)"
            )));
        }
        loop {
            let (h, body) = match self.read_frame() {
                Ok(f) => f,
                Err(e) => {
                    // Given up on: a late reply is skipped, not kept.
                    self.outstanding.remove(&id);
                    return Err(e);
                }
            };
            if h.request_id == id || h.request_id == 0 {
                self.outstanding.remove(&id);
                return reply_or_error(h, body);
            }
            if self.outstanding.contains(&h.request_id) {
                self.early.insert(h.request_id, (h, body));
            }
        }
    }

    fn io_error(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                addr: self.addr,
                timeout: self.timeout,
            },
            // TLS 1.3: a server that refuses the certificate says so once
            // the client reads.
            io::ErrorKind::InvalidData => {
                ClientError::Tls(format!("connection to {} failed: {e}", self.addr))
            }
            _ => ClientError::Io(format!("connection to {} failed: {e}", self.addr)),
        }
    }

    fn read_frame(&mut self) -> Result<(Header, Vec<u8>), ClientError> {
        read_frame(&mut self.stream).map_err(|e| match e {
            ReadFrameError::Io(e) => self.io_error(e),
            ReadFrameError::Frame(e) => {
                ClientError::Protocol(format!("reply from {}: {e}", self.addr))
            }
        })
    }
}

/// Turns a reply frame into its header and body, or the server's refusal.
pub fn reply_or_error(h: Header, body: Vec<u8>) -> Result<(Header, Vec<u8>), ClientError> {
    if h.is_error() {
        let e = wire::decode_error(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let name = ErrorCode::from_u16(e.code).map_or("error", ErrorCode::name);
        return Err(ClientError::Server {
            code: e.code,
            name,
            message: e.message.into_owned(),
            epoch: h.epoch,
        });
    }
    Ok((h, body))
}

/// The storage unit's operations over any request/reply channel: a
/// [`UnitClient`], or a unit reached through an `Env` (trex-log).
pub trait UnitApi {
    /// Sends one request and waits for its reply: header and body.
    fn call(
        &mut self,
        op: Opcode,
        epoch: u64,
        body: &dyn Fn(&mut Vec<u8>),
    ) -> Result<(Header, Vec<u8>), ClientError>;

    /// Writes a batch; one status per op.
    fn write(&mut self, epoch: u64, ops: &[WriteOp<'_>]) -> Result<Vec<Status>, ClientError> {
        let (_, body) = self.call(Opcode::Write, epoch, &|b| {
            wire::encode_write_request(b, ops)
        })?;
        statuses(&body, ops.len())
    }

    /// Repairs a batch: writes that may also replace a record whose checksum
    /// fails (read repair, with the value the chain decided); one status per op.
    fn repair(&mut self, epoch: u64, ops: &[WriteOp<'_>]) -> Result<Vec<Status>, ClientError> {
        let (_, body) = self.call(Opcode::Repair, epoch, &|b| {
            wire::encode_write_request(b, ops)
        })?;
        statuses(&body, ops.len())
    }

    /// Offers entries to replace damaged records only where the damaged
    /// record provably held them (`verified-repair`, docs/wire.md); one status
    /// per op: `ok` means the unit's own bytes are back.
    fn verified_repair(
        &mut self,
        epoch: u64,
        ops: &[WriteOp<'_>],
    ) -> Result<Vec<Status>, ClientError> {
        let (_, body) = self.call(Opcode::VerifiedRepair, epoch, &|b| {
            wire::encode_write_request(b, ops)
        })?;
        statuses(&body, ops.len())
    }

    /// Fills a batch of addresses with junk; one status per address.
    fn fill(&mut self, epoch: u64, addrs: &[u64]) -> Result<Vec<Status>, ClientError> {
        let (_, body) = self.call(Opcode::Fill, epoch, &|b| wire::encode_addr_list(b, addrs))?;
        statuses(&body, addrs.len())
    }

    /// Reads a batch of addresses.
    fn read(&mut self, epoch: u64, addrs: &[u64]) -> Result<Vec<ReadItem>, ClientError> {
        let (_, body) = self.call(Opcode::Read, epoch, &|b| wire::encode_addr_list(b, addrs))?;
        let r = wire::decode_read_reply(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if r.len() != addrs.len() {
            return Err(ClientError::Protocol(format!(
                "{} results for {} addresses",
                r.len(),
                addrs.len()
            )));
        }
        Ok(r.iter()
            .map(|x| {
                let e = x.entry.unwrap_or(wire::Entry {
                    writer: 0,
                    seq: 0,
                    data: &[],
                });
                ReadItem {
                    addr: x.addr,
                    status: x.status,
                    writer: e.writer,
                    seq: e.seq,
                    data: e.data.to_vec(),
                }
            })
            .collect())
    }

    /// Raises the trim mark; returns the mark afterwards.
    fn trim(&mut self, epoch: u64, prefix: u64) -> Result<u64, ClientError> {
        let (_, body) = self.call(Opcode::Trim, epoch, &|b| wire::encode_u64(b, prefix))?;
        wire::decode_u64(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Seals the unit at `epoch`.
    fn seal(&mut self, epoch: u64) -> Result<SealReply, ClientError> {
        let (_, body) = self.call(Opcode::Seal, epoch, &|b| wire::encode_u64(b, epoch))?;
        wire::decode_seal_reply(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The unit's state.
    fn info(&mut self) -> Result<InfoReply, ClientError> {
        let (_, body) = self.call(Opcode::Info, 0, &|_| {})?;
        wire::decode_info_reply(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The node's role and build (`node-info`; every role answers it).
    fn node_info(&mut self) -> Result<NodeInfo, ClientError> {
        let (_, body) = self.call(Opcode::NodeInfo, 0, &|_| {})?;
        wire::decode_node_info(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// Asks the node at `addr`, of any role, for its role and build (`node-info`)
/// within `timeout`, with frames of `cluster_id`. A node built before
/// `node-info` existed refuses it: a [`ClientError::Server`] whose code is
/// `unknown-opcode`.
pub fn node_info(addr: &str, timeout: Duration, cluster_id: u32) -> Result<NodeInfo, ClientError> {
    let mut c = UnitClient::open(addr, timeout, "is the node running?")?;
    c.cluster_id = cluster_id;
    c.node_info()
}

impl UnitApi for UnitClient {
    fn call(
        &mut self,
        op: Opcode,
        epoch: u64,
        body: &dyn Fn(&mut Vec<u8>),
    ) -> Result<(Header, Vec<u8>), ClientError> {
        let id = self.send(op, epoch, body)?;
        self.recv(id)
    }
}

/// Decodes a status-list reply that must hold `want` statuses.
pub fn statuses(body: &[u8], want: usize) -> Result<Vec<Status>, ClientError> {
    let l = wire::decode_status_list(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if l.len() != want {
        return Err(ClientError::Protocol(format!(
            "{} statuses for {want} operations",
            l.len()
        )));
    }
    Ok(l.iter().collect())
}
