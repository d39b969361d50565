//! The same loads against etcd's JSON gateway, to compare with: puts, and
//! lease grant+revoke pairs. Plain HTTP/1.1 over one keep-alive connection per
//! client, so no HTTP stack is linked for a comparison.

use crate::run::Ctx;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Where etcd is.
#[derive(Clone, Debug)]
pub struct EtcdLoad {
    /// etcd's client URL host:port (plain HTTP).
    pub endpoint: String,
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            o.push(if k <= c.len() {
                T[(n >> (18 - 6 * k) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    o
}

/// One etcd put client: puts a 100-byte value under its own key. A failed
/// request drops the connection; the next one connects anew.
pub fn put_client(a: &EtcdLoad, i: usize, ctx: &mut Ctx) -> Result<(), String> {
    let mut h = Some(Http::connect(&a.endpoint)?);
    let body = format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        base64(format!("bench-{i}").as_bytes()),
        base64(&[b'v'; 100])
    );
    ctx.start();
    while let Some(slot) = ctx.next() {
        let r = Http::reuse(&mut h, &a.endpoint).and_then(|c| c.post("/v3/kv/put", &body));
        match r {
            Ok(_) => ctx.done(slot, 1),
            Err(e) => {
                h = None;
                ctx.failed(slot, 0, "etcd", &e);
            }
        }
    }
    Ok(())
}

/// One etcd lease client: grants a lease, then revokes it. A lease whose
/// revoke failed is revoked before the next grant and before the client ends.
pub fn lease_client(a: &EtcdLoad, _i: usize, ctx: &mut Ctx) -> Result<(), String> {
    let mut h = Some(Http::connect(&a.endpoint)?);
    let mut pending: Option<String> = None;
    ctx.start();
    while let Some(slot) = ctx.next() {
        if let Some(id) = &pending {
            match Http::reuse(&mut h, &a.endpoint).and_then(|c| revoke(c, id)) {
                Ok(()) => pending = None,
                Err(e) => {
                    h = None;
                    ctx.failed(slot, 0, "etcd", &e);
                    continue;
                }
            }
        }
        let grant = Http::reuse(&mut h, &a.endpoint)
            .and_then(|c| c.post("/v3/lease/grant", "{\"TTL\":30}"))
            .and_then(|r| lease_id(&r));
        let id = match grant {
            Ok(id) => id,
            Err(e) => {
                h = None;
                ctx.failed(slot, 0, "etcd", &e);
                continue;
            }
        };
        match Http::reuse(&mut h, &a.endpoint).and_then(|c| revoke(c, &id)) {
            Ok(()) => ctx.done(slot, 1),
            Err(e) => {
                h = None;
                pending = Some(id);
                ctx.failed(slot, 0, "etcd", &e);
            }
        }
    }
    if let Some(id) = pending {
        Http::reuse(&mut h, &a.endpoint)
            .and_then(|c| revoke(c, &id))
            .map_err(|e| {
                format!("could not revoke etcd lease {id} at the end ({e}); it expires in 30 s")
            })?;
    }
    Ok(())
}

fn lease_id(reply: &str) -> Result<String, String> {
    reply
        .split("\"ID\":\"")
        .nth(1)
        .and_then(|x| x.split('"').next())
        .map(str::to_string)
        .ok_or_else(|| format!("no lease id in etcd's answer: {reply}"))
}

fn revoke(c: &mut Http, id: &str) -> Result<(), String> {
    c.post("/v3/lease/revoke", &format!("{{\"ID\":\"{id}\"}}"))
        .map(|_| ())
}

/// A keep-alive HTTP/1.1 connection to etcd's JSON gateway.
struct Http {
    s: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Http {
    fn connect(host: &str) -> Result<Http, String> {
        let s = TcpStream::connect(host)
            .map_err(|e| format!("cannot connect to etcd at {host}: {e}; is it running?"))?;
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        Ok(Http {
            s,
            host: host.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// The connection in `slot`, connecting first if there is none.
    fn reuse<'a>(slot: &'a mut Option<Http>, host: &str) -> Result<&'a mut Http, String> {
        if slot.is_none() {
            *slot = Some(Http::connect(host)?);
        }
        Ok(slot.as_mut().expect("filled above"))
    }

    /// POSTs a JSON body; returns the response body.
    fn post(&mut self, path: &str, body: &str) -> Result<String, String> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.s
            .write_all(req.as_bytes())
            .map_err(|e| format!("etcd send failed: {e}"))?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let (head_end, len) = loop {
            let n = self
                .s
                .read(&mut chunk)
                .map_err(|e| format!("etcd receive failed: {e}"))?;
            if n == 0 {
                return Err("etcd closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return Err(format!(
                        "etcd answered: {}",
                        head.lines().next().unwrap_or("")
                    ));
                }
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                break (p + 4, len);
            }
        };
        while self.buf.len() < head_end + len {
            let n = self
                .s
                .read(&mut chunk)
                .map_err(|e| format!("etcd receive failed: {e}"))?;
            if n == 0 {
                return Err("etcd closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&self.buf[head_end..head_end + len]).into_owned())
    }
}
