//! Replies as the event loop carries them: the whole encoded frame and where it
//! goes. Every role's service produces these; every reply header is built here,
//! in one place ([`reply_header`]), and so are error replies.

use crate::metrics::BuildInfo;
use trex_wire::ops::Role;
use trex_wire::{
    self as wire, begin_frame, finish_frame, ErrorCode, Header, NodeInfo, FLAG_ERROR, FLAG_RESPONSE,
};

/// Identifies where a reply goes (the event loop's connection token).
pub type ReplyTo = u64;

/// A reply frame ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Destination.
    pub to: ReplyTo,
    /// The whole encoded frame.
    pub frame: Vec<u8>,
    /// Close the connection once this frame is sent (protocol violation).
    pub close: bool,
}

/// The header of a reply to `request`: the request's opcode and id (so the
/// client can match it), `FLAG_RESPONSE` plus `flags` (0, or `FLAG_ERROR` for an
/// error body), the replying server's `epoch` (a storage unit's sealed epoch; 0
/// for roles without one) and its own `cluster_id` (so a client of the wrong
/// cluster sees which one answered). Body length and checksum are filled in by
/// `finish_frame`.
pub fn reply_header(request: &Header, flags: u16, epoch: u64, cluster_id: u32) -> Header {
    debug_assert_eq!(flags & !FLAG_ERROR, 0, "a reply adds only FLAG_ERROR");
    Header {
        opcode: request.opcode,
        flags: FLAG_RESPONSE | flags,
        request_id: request.request_id,
        epoch,
        cluster_id,
        body_len: 0,
        body_crc: 0,
    }
}

/// An error reply to a request that violated the protocol, from a server of
/// `cluster_id` without an epoch of its own; the connection closes after it.
pub fn violation(to: ReplyTo, req: &Header, cluster_id: u32, code: ErrorCode, msg: &str) -> Reply {
    Reply {
        to,
        frame: error_frame(&reply_header(req, FLAG_ERROR, 0, cluster_id), code, msg),
        close: true,
    }
}

/// The cluster check every server (storage unit, sequencer, consensus node)
/// makes on each request frame before looking at its opcode: `None` if the
/// frame is meant for `cluster_id`, else the `wrong-cluster` error reply,
/// stamped like the server's other replies (`epoch`, `cluster_id`), after which
/// the connection closes: a client or peer of another cluster must not keep
/// talking to this one. `server` names the server in the message ("unit",
/// "sequencer", "consensus node").
pub fn refuse_foreign_cluster(
    to: ReplyTo,
    header: &Header,
    server: &str,
    epoch: u64,
    cluster_id: u32,
) -> Option<Reply> {
    if header.cluster_id == cluster_id {
        return None;
    }
    let msg = format!(
        "frame is for cluster {} but this {server} serves cluster {cluster_id}; check the client's --cluster-id",
        header.cluster_id
    );
    let h = reply_header(header, FLAG_ERROR, epoch, cluster_id);
    Some(Reply {
        to,
        frame: error_frame(&h, ErrorCode::WrongCluster, &msg),
        close: true,
    })
}

/// The reply to a `node-info` request (opcode `0x40`), which every role
/// answers the same way: its `role` and `build`, in a header stamped like the
/// role's other replies (`epoch`, `cluster_id`). A request with a body is
/// refused `malformed-body` and the connection closes after it (the reply's
/// `close` is set). The caller has already refused a reply frame and a frame
/// of another cluster.
pub fn node_info(
    to: ReplyTo,
    header: &Header,
    body: &[u8],
    role: Role,
    build: &BuildInfo,
    epoch: u64,
    cluster_id: u32,
) -> Reply {
    if let Err(e) = wire::decode_node_info_request(body) {
        let msg = format!("node-info takes an empty body: {e}");
        let h = reply_header(header, FLAG_ERROR, epoch, cluster_id);
        return Reply {
            to,
            frame: error_frame(&h, ErrorCode::MalformedBody, &msg),
            close: true,
        };
    }
    let info = NodeInfo {
        role,
        version: build.version.to_string(),
        revision: build.revision.to_string(),
    };
    let mut frame = Vec::with_capacity(64);
    let start = begin_frame(&mut frame);
    wire::encode_node_info(&mut frame, &info);
    finish_frame(
        &mut frame,
        start,
        reply_header(header, 0, epoch, cluster_id),
    );
    Reply {
        to,
        frame,
        close: false,
    }
}

/// Encodes a whole error reply frame.
pub fn error_frame(header: &Header, code: ErrorCode, msg: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64 + msg.len());
    let start = begin_frame(&mut frame);
    wire::encode_error(&mut frame, code as u16, msg);
    finish_frame(&mut frame, start, *header);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_header_echoes_the_request_and_stamps_the_server() {
        let req = Header {
            opcode: 0x30,
            flags: 0,
            request_id: 77,
            epoch: 5,
            cluster_id: 9,
            body_len: 12,
            body_crc: 34,
        };
        let h = reply_header(&req, FLAG_ERROR, 3, 4);
        let want = Header {
            opcode: 0x30,
            flags: FLAG_RESPONSE | FLAG_ERROR,
            request_id: 77,
            epoch: 3,
            cluster_id: 4,
            body_len: 0,
            body_crc: 0,
        };
        assert_eq!(h, want, "nothing of the request but its opcode and id");
        assert_eq!(reply_header(&req, 0, 0, 0).flags, FLAG_RESPONSE);
    }

    #[test]
    fn node_info_answers_the_build_and_refuses_a_body() {
        let req = Header {
            opcode: wire::Opcode::NodeInfo as u8,
            request_id: 5,
            cluster_id: 2,
            ..Header::default()
        };
        let build = BuildInfo {
            version: "1.2.3",
            revision: "abc",
        };
        let r = node_info(1, &req, &[], Role::Storage, &build, 7, 2);
        assert!(!r.close);
        let f = wire::parse_frame(&r.frame).unwrap().unwrap();
        assert_eq!((f.header.epoch, f.header.cluster_id), (7, 2));
        assert_eq!(f.header.flags, FLAG_RESPONSE);
        let info = wire::decode_node_info(f.body).unwrap();
        assert_eq!(
            (info.role, info.version.as_str(), info.revision.as_str()),
            (Role::Storage, "1.2.3", "abc")
        );
        let r = node_info(1, &req, &[0], Role::Storage, &build, 7, 2);
        assert!(r.close, "a body is a protocol violation");
        let f = wire::parse_frame(&r.frame).unwrap().unwrap();
        assert!(f.header.is_error());
        let e = wire::decode_error(f.body).unwrap();
        assert_eq!(e.code, ErrorCode::MalformedBody as u16);
    }
}
