//! The blocking side of the protocol: connecting with timeouts, and the one
//! frame reader every blocking client uses (the unit client, the sequencer's
//! token calls through it, the consensus client and the load generator).
//!
//! The reader checks what the event loop checks on the server side: the header
//! (magic, version, flags, header checksum, body length limit, through
//! [`Header::decode`]) and then the body's checksum, so a damaged reply is an
//! error and never a value.

use crate::tls::ClientStream;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;
use thiserror::Error;
use trex_wire::{FrameError, Header, HEADER_LEN};

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum ReadFrameError {
    /// The connection failed or timed out (see [`io::Error::kind`]:
    /// `WouldBlock`/`TimedOut` for a read timeout).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The header is not a valid frame header, or the body does not match the
    /// header's checksum ([`FrameError::BadBodyChecksum`]): damaged in flight.
    #[error("{0}")]
    Frame(#[from] FrameError),
}

impl ReadFrameError {
    /// Whether the read timed out (the outcome of the request is unknown).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ReadFrameError::Io(e)
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// Reads one whole frame from `r`: its header, then its body into `body`
/// (resized to the body length, at most `MAX_BODY_LEN`), verifying both
/// checksums. Blocks until the frame is complete or the stream's timeout fires.
pub fn read_frame_into(r: &mut impl Read, body: &mut Vec<u8>) -> Result<Header, ReadFrameError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head)?;
    let h = Header::decode(&head)?;
    body.clear();
    body.resize(h.body_len as usize, 0);
    r.read_exact(body)?;
    let computed = crc32fast::hash(body);
    if computed != h.body_crc {
        return Err(FrameError::BadBodyChecksum {
            stored: h.body_crc,
            computed,
        }
        .into());
    }
    Ok(h)
}

/// [`read_frame_into`] with a fresh body buffer.
pub fn read_frame(r: &mut impl Read) -> Result<(Header, Vec<u8>), ReadFrameError> {
    let mut body = Vec::new();
    let h = read_frame_into(r, &mut body)?;
    Ok((h, body))
}

/// Connects to `addr` (HOST:PORT, every resolved address tried in turn) within
/// `timeout`, with Nagle off and `timeout` as the read and write timeout, and
/// with TLS when the process has a client TLS setup
/// ([`crate::tls::set_client_config`]): the handshake is done on return.
/// Errors: the address does not resolve (a usage problem), no address
/// accepted the connection (the last error is returned), or the TLS handshake
/// failed.
pub fn connect(addr: &str, timeout: Duration) -> Result<(ClientStream, SocketAddr), ConnectError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| ConnectError::Resolve {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                s.set_nodelay(true).ok();
                s.set_read_timeout(Some(timeout)).ok();
                s.set_write_timeout(Some(timeout)).ok();
                match ClientStream::open(s, addr, crate::tls::client_config()) {
                    Ok(s) => return Ok((s, a)),
                    // A certificate refused by either side: the same at
                    // every address, and on every retry.
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        return Err(ConnectError::Tls { addr: a, source: e })
                    }
                    // A handshake that timed out or was cut: like a
                    // connection that failed (a hung server accepts TCP).
                    Err(e) => last = Some((a, e)),
                }
            }
            Err(e) => last = Some((a, e)),
        }
    }
    Err(match last {
        Some((a, e)) => ConnectError::Refused { addr: a, source: e },
        None => ConnectError::Resolve {
            addr: addr.to_string(),
            reason: "it resolves to no address".into(),
        },
    })
}

/// Why [`connect`] failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The address does not resolve: fix it (HOST:PORT).
    #[error("cannot resolve '{addr}': {reason}; use HOST:PORT")]
    Resolve {
        /// What was given.
        addr: String,
        /// Why it does not resolve.
        reason: String,
    },
    /// Nothing accepted the connection in time.
    #[error("cannot connect to {addr}: {source}")]
    Refused {
        /// The last address tried.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The TLS handshake failed on a certificate: one the other side does not
    /// accept, or a server's this process does not trust. Retrying cannot help.
    #[error("cannot connect to {addr}: {source}")]
    Tls {
        /// The address.
        addr: SocketAddr,
        /// The error (it says what to check).
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use trex_wire::{begin_frame, finish_frame};

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        let s = begin_frame(&mut f);
        f.extend_from_slice(body);
        finish_frame(&mut f, s, Header::default());
        f
    }

    #[test]
    fn reads_a_whole_frame_and_refuses_a_damaged_body() {
        let f = frame(b"hello");
        let (h, body) = read_frame(&mut &f[..]).unwrap();
        assert_eq!((h.body_len, &body[..]), (5, &b"hello"[..]));

        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ReadFrameError::Frame(FrameError::BadBodyChecksum { .. }))
        ));

        let mut bad_head = f.clone();
        bad_head[0] = b'X';
        assert!(matches!(
            read_frame(&mut &bad_head[..]),
            Err(ReadFrameError::Frame(FrameError::BadMagic(_)))
        ));

        let short = &f[..f.len() - 1];
        assert!(matches!(
            read_frame(&mut &short[..]),
            Err(ReadFrameError::Io(_))
        ));
    }
}
