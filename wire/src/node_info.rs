//! `node-info` (opcode `0x40`): what every role answers about itself, so that an
//! operator can see which build each node of a cluster runs (`trex status`).
//!
//! Request body: empty. Reply body:
//!
//! ```text
//! role         u8    1 consensus, 2 sequencer, 3 storage (as in `members`)
//! version_len  u8
//! version      bytes[version_len]    UTF-8, the release, e.g. `0.1.0`
//! revision_len u8
//! revision     bytes[revision_len]   UTF-8, the git revision, or `unknown`
//! ```
//!
//! A node built before this opcode existed answers `unknown-opcode` (6) and
//! closes the connection: a client reports its version as unknown.

use crate::codec::{DecodeError, Reader};
use crate::ops::Role;

/// Longest `version` or `revision` string, in bytes (its length is one byte).
pub const MAX_NODE_INFO_TEXT: usize = 255;

/// What a node says about itself in a `node-info` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The role it serves.
    pub role: Role,
    /// Its release (the crate version, e.g. `0.1.0`).
    pub version: String,
    /// The git revision it was built from, or `unknown`.
    pub revision: String,
}

/// Checks a `node-info` request body: it must be empty.
pub fn decode_node_info_request(body: &[u8]) -> Result<(), DecodeError> {
    Reader::new(body).finish()
}

/// Encodes a `node-info` reply body. Text longer than
/// [`MAX_NODE_INFO_TEXT`] bytes is cut there (at a character boundary), so
/// the length always fits its byte.
pub fn encode_node_info(out: &mut Vec<u8>, info: &NodeInfo) {
    out.push(info.role as u8);
    put_text(out, &info.version);
    put_text(out, &info.revision);
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_NODE_INFO_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Decodes a `node-info` reply body. Bytes that are not UTF-8 are replaced
/// (the text is for people).
pub fn decode_node_info(body: &[u8]) -> Result<NodeInfo, DecodeError> {
    let mut r = Reader::new(body);
    let offset = r.offset();
    let value = r.u8()?;
    let role = Role::from_u8(value).ok_or(DecodeError::BadRole { offset, value })?;
    let text = |r: &mut Reader<'_>| -> Result<String, DecodeError> {
        let n = r.u8()? as usize;
        Ok(String::from_utf8_lossy(r.bytes(n)?).into_owned())
    };
    let version = text(&mut r)?;
    let revision = text(&mut r)?;
    r.finish()?;
    Ok(NodeInfo {
        role,
        version,
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_round_trips_and_long_text_is_cut_at_a_character() {
        let info = NodeInfo {
            role: Role::Sequencer,
            version: "0.1.0".into(),
            revision: "0123456789ab".into(),
        };
        let mut b = Vec::new();
        encode_node_info(&mut b, &info);
        assert_eq!(b.len(), 1 + 1 + 5 + 1 + 12);
        assert_eq!(decode_node_info(&b), Ok(info));
        // 200 two-byte characters: 400 bytes, cut to 254 (127 whole ones).
        let long = NodeInfo {
            role: Role::Storage,
            version: "é".repeat(200),
            revision: String::new(),
        };
        let mut b = Vec::new();
        encode_node_info(&mut b, &long);
        let back = decode_node_info(&b).unwrap();
        assert_eq!(back.version, "é".repeat(127));
        assert_eq!(back.revision, "");
    }

    #[test]
    fn bad_replies_are_errors() {
        assert_eq!(
            decode_node_info(&[9, 0, 0]),
            Err(DecodeError::BadRole {
                offset: 0,
                value: 9
            })
        );
        assert!(matches!(
            decode_node_info(&[1, 5, b'a']),
            Err(DecodeError::UnexpectedEof { .. })
        ));
        assert!(matches!(
            decode_node_info(&[1, 0, 0, 7]),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(decode_node_info_request(&[]).is_ok());
        assert!(decode_node_info_request(&[0]).is_err());
    }
}
