//! Mutual TLS on every connection, and the role a peer's certificate grants.
//!
//! Every node and every client holds a certificate signed by the cluster's CA.
//! A server accepts only peers that present one ([`TlsConfig::server`] requires
//! and verifies a client certificate); a client accepts only servers whose
//! certificate the same CA signed for the address it dialled. What the peer may
//! do then follows from its certificate: [`RoleMap::role_of`] reads the
//! subject's common name (`node:NAME`, `admin:NAME`, `client:NAME`, or an exact
//! name configured in `[tls.roles]`), and each service checks every request
//! against that [`Role`] (see `docs/security.md`).
//!
//! rustls connections are buffers fed and drained by the caller, so the
//! non-blocking side ([`Transport`]) runs inside the `mio` loop without an async
//! runtime: bytes read from the socket go in with `read_tls`, plaintext comes
//! out of `reader()`, and plaintext written into `writer()` leaves through
//! `write_tls` whenever the socket takes it.

use rustls::pki_types::pem::PemObject;
pub use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use thiserror::Error;

/// What a connection may do, from its peer's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// TLS is off (`--insecure`): every request is served, as before roles existed.
    Anyone,
    /// A node of the cluster: the peer protocol and every node-to-node
    /// operation (sealing, repair, registering, installing layouts).
    Node,
    /// An operator: everything a client may do, and sealing, trimming,
    /// installing layouts, changing members and repairing. Not the peer protocol.
    Admin,
    /// An application: append, read, follow, tokens and advisory locks.
    Client,
    /// A certificate of the cluster's CA whose name maps to no role: only
    /// `node-info` is served.
    Unmapped,
}

impl Role {
    /// Lower-case name, as in certificates, the config file and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Anyone => "anyone",
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Unmapped => "none",
        }
    }

    /// Parses `node`, `admin` or `client`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "node" => Some(Role::Node),
            "admin" => Some(Role::Admin),
            "client" => Some(Role::Client),
            _ => None,
        }
    }

    /// At least an operator: a node or an admin (or TLS off).
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Anyone | Role::Node | Role::Admin)
    }

    /// At least an application: a client, an admin or a node (or TLS off).
    pub fn is_client(self) -> bool {
        self.is_admin() || self == Role::Client
    }

    /// A node of the cluster (or TLS off).
    pub fn is_node(self) -> bool {
        matches!(self, Role::Anyone | Role::Node)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `Ok` if `role` may do what needs `needs`; else the `not-authorized`
/// message for `what` (an opcode or operation name).
pub fn check(role: Role, needs: Role, what: &str) -> Result<(), String> {
    let ok = match needs {
        Role::Node => role.is_node(),
        Role::Admin => role.is_admin(),
        Role::Client => role.is_client(),
        Role::Anyone | Role::Unmapped => true,
    };
    if ok {
        Ok(())
    } else {
        Err(refusal(role, what, needs))
    }
}

/// The text of a `not-authorized` refusal: what was refused, which role the
/// certificate has, which role the operation needs, and where to read more.
pub fn refusal(role: Role, what: &str, needs: Role) -> String {
    format!(
        "this certificate has role {role}; {what} needs a{} {needs} certificate (see docs/security.md)",
        if needs == Role::Admin { "n" } else { "" }
    )
}

/// Certificate name → role.
///
/// A name listed in `exact` gets that role; otherwise the prefix before the
/// first `:` of the subject's common name decides (`node:`, `admin:`,
/// `client:`); anything else is [`Role::Unmapped`].
#[derive(Clone, Debug, Default)]
pub struct RoleMap {
    /// Common names with a configured role (the config file's `[tls.roles]`).
    pub exact: BTreeMap<String, Role>,
}

impl RoleMap {
    /// The role and the name of the peer whose end-entity certificate is `der`.
    pub fn role_of(&self, der: &[u8]) -> (Role, String) {
        let Some(cn) = common_name(der) else {
            return (Role::Unmapped, "(no common name)".into());
        };
        if let Some(r) = self.exact.get(&cn) {
            return (*r, cn);
        }
        let role = cn
            .split_once(':')
            .and_then(|(prefix, _)| Role::parse(prefix))
            .unwrap_or(Role::Unmapped);
        (role, cn)
    }
}

/// Where a node's or a client's certificate material is.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM): peers must present a certificate it signed.
    pub ca: PathBuf,
    /// This process's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// This process's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files `trex certs init` writes for `name` in `dir`: `ca.pem`,
    /// `NAME.pem` and `NAME.key`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("cannot use {path}: {reason}; create the certificates with `trex certs init --dir DIR` or fix the path (docs/security.md)")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the material (a key that does not match the certificate, …).
    #[error("the TLS configuration is not usable: {0}; check that the key belongs to the certificate and the CA signed it (docs/security.md)")]
    Config(String),
}

/// A node's or a client's TLS setup: what it serves with, what it connects
/// with, and how peers' certificates map to roles.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Servers: present our certificate, require one from the peer, signed by the CA.
    pub server: Arc<ServerConfig>,
    /// Clients: present our certificate, verify the server's against the CA.
    pub client: Arc<ClientConfig>,
    /// Peers' certificate names → roles.
    pub roles: RoleMap,
    /// Where it was loaded from ([`TlsConfig::reload`]).
    pub files: TlsFiles,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl TlsConfig {
    /// Reads the CA, the certificate chain and the key, and builds both sides.
    pub fn load(files: &TlsFiles, roles: RoleMap) -> Result<TlsConfig, TlsError> {
        let mut ca = RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&files.ca)
            .map_err(|e| file_error(&files.ca, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(&files.ca, e))?;
        if cas.is_empty() {
            return Err(file_error(&files.ca, "it holds no certificate"));
        }
        for c in cas {
            ca.add(c).map_err(|e| file_error(&files.ca, e))?;
        }
        let ca = Arc::new(ca);
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| file_error(&files.cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(&files.cert, e))?;
        if chain.is_empty() {
            return Err(file_error(&files.cert, "it holds no certificate"));
        }
        let key =
            || PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e));
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(ca.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key()?)
            .map_err(config)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(ca)
            .with_client_auth_cert(chain, key()?)
            .map_err(config)?;
        Ok(TlsConfig {
            server: Arc::new(server),
            client: Arc::new(client),
            roles,
            files: files.clone(),
        })
    }

    /// Reads the same files again (renewed certificates), with the same roles.
    pub fn reload(&self) -> Result<TlsConfig, TlsError> {
        TlsConfig::load(&self.files, self.roles.clone())
    }
}

/// The TLS setup every outgoing connection of this process uses (`None`: plain TCP).
static CLIENT: RwLock<Option<Arc<ClientConfig>>> = RwLock::new(None);

/// Makes every later outgoing connection of this process ([`crate::conn::connect`],
/// consensus peer links) use `config`, or plain TCP with `None`. Set once at
/// start-up, from the command line and the config file.
pub fn set_client_config(config: Option<Arc<ClientConfig>>) {
    // A poisoned lock only means a panic elsewhere while setting it: the value is whole.
    *CLIENT.write().unwrap_or_else(|e| e.into_inner()) = config;
}

/// The TLS setup of outgoing connections, if any.
pub fn client_config() -> Option<Arc<ClientConfig>> {
    CLIENT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The name a server's certificate must carry when dialled as `addr`
/// (HOST:PORT): its host, an IP address or a DNS name.
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{host}' cannot name a TLS server ({e}); use an IP address or a DNS name"),
        )
    })
}

/// Adds what to do to a TLS failure seen by a client.
fn client_tls_error(e: io::Error) -> io::Error {
    if e.kind() != io::ErrorKind::InvalidData {
        return e;
    }
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("TLS failed: {e}; the server refused this certificate, presented one the cluster CA did not sign for this address, or does not run TLS: check --tls-dir and --tls-name (tls-dir and tls-name in a config file), or use --insecure if the cluster runs without TLS (docs/security.md)"),
    )
}

/// A blocking connection, plain or TLS: what [`crate::conn::connect`] returns.
pub enum ClientStream {
    /// Plain TCP (`--insecure`).
    Plain(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl ClientStream {
    /// Wraps a connected socket, with a TLS handshake when `config` is set.
    /// The handshake runs within the socket's timeouts.
    pub fn open(
        tcp: TcpStream,
        addr: &str,
        config: Option<Arc<ClientConfig>>,
    ) -> io::Result<ClientStream> {
        let Some(config) = config else {
            return Ok(ClientStream::Plain(tcp));
        };
        let conn = ClientConnection::new(config, server_name(addr)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(client_tls_error)?;
        }
        Ok(ClientStream::Tls(Box::new(s)))
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => &s.sock,
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.read(buf),
            ClientStream::Tls(s) => s.read(buf).map_err(client_tls_error),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.write(buf),
            ClientStream::Tls(s) => s.write(buf).map_err(client_tls_error),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush(),
            ClientStream::Tls(s) => s.flush().map_err(client_tls_error),
        }
    }
}

/// A non-blocking connection inside a `mio` loop, plain or TLS, read and
/// written like a non-blocking socket: `WouldBlock` means "wait for the next
/// readiness event". With TLS, written bytes may stay queued in the TLS layer
/// when the socket is full; [`Transport::flush`] sends them on writability.
pub struct Transport {
    /// The socket (register it with the poll).
    pub tcp: mio::net::TcpStream,
    tls: Option<Box<rustls::Connection>>,
    /// A TLS server that has not yet seen the peer's first byte.
    first_byte: bool,
}

impl Transport {
    /// A plain connection.
    pub fn plain(tcp: mio::net::TcpStream) -> Transport {
        Transport {
            tcp,
            tls: None,
            first_byte: false,
        }
    }

    /// The server side of a TLS connection accepted on `tcp`.
    pub fn server(tcp: mio::net::TcpStream, config: Arc<ServerConfig>) -> io::Result<Transport> {
        let conn = rustls::ServerConnection::new(config)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Transport {
            tcp,
            tls: Some(Box::new(conn.into())),
            first_byte: true,
        })
    }

    /// The client side of a TLS connection to `name`, connecting on `tcp`.
    pub fn client(
        tcp: mio::net::TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Transport> {
        let conn = ClientConnection::new(config, name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Transport {
            tcp,
            tls: Some(Box::new(conn.into())),
            first_byte: false,
        })
    }

    /// Whether this connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// TLS: the handshake is over, and the peer's end-entity certificate (if it
    /// sent one). `None` while handshaking or without TLS.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        let tls = self.tls.as_ref()?;
        if tls.is_handshaking() {
            return None;
        }
        tls.peer_certificates()?.first().map(|c| c.as_ref())
    }

    /// Reads plaintext into `buf`. `Ok(0)`: the peer closed. With TLS, reads
    /// the socket until it would block or plaintext is available, answering
    /// the handshake on the way; a TLS error is `InvalidData` (the alert for
    /// the peer is queued: [`Transport::flush`] it before closing). A TLS
    /// server whose peer's first byte does not start a TLS handshake record
    /// (a plain client) gets `Unsupported`, with nothing consumed.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.read(buf);
        };
        if self.first_byte {
            let mut first = [0u8; 1];
            match self.tcp.peek(&mut first)? {
                0 => return Ok(0),
                _ if first[0] != HANDSHAKE_RECORD => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "the peer does not speak TLS",
                    ))
                }
                _ => self.first_byte = false,
            }
        }
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without a close_notify: a plain EOF here.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match tls.read_tls(&mut self.tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            let state = tls.process_new_packets();
            // Handshake answers, or the alert that explains a refusal.
            flush_tls(tls, &mut self.tcp)?;
            if let Err(e) = state {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Writes plaintext from `buf`; `WouldBlock` when nothing could be taken.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.write(buf);
        };
        let mut n = tls.writer().write(buf)?;
        flush_tls(tls, &mut self.tcp)?;
        if n == 0 && !buf.is_empty() {
            // The TLS layer's buffer was full; the flush may have made room.
            n = tls.writer().write(buf)?;
            flush_tls(tls, &mut self.tcp)?;
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        Ok(n)
    }

    /// Sends what the TLS layer holds, as far as the socket takes it.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_mut() {
            Some(tls) => flush_tls(tls, &mut self.tcp),
            None => Ok(()),
        }
    }

    /// TLS bytes wait for the socket to take them.
    pub fn pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
}

/// The content type of a TLS handshake record: every TLS client's first byte.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Writes TLS records until the socket would block or none are left.
fn flush_tls(tls: &mut rustls::Connection, tcp: &mut mio::net::TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One DER element: (tag, contents, what follows). `None` if malformed.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject's common name (OID 2.5.4.3) of an X.509 certificate in DER.
/// Only verified certificates reach it; anything unexpected gives `None`.
pub fn common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = der(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der(cert)? else {
        return None;
    };
    // [0] version (optional), serial, signature algorithm, issuer, validity: skipped.
    if tbs.first() == Some(&0xA0) {
        tbs = der(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = der(tbs)?.2;
    }
    let (SEQUENCE, mut subject, _) = der(tbs)? else {
        return None;
    };
    while !subject.is_empty() {
        let (_, mut set, rest) = der(subject)?;
        subject = rest;
        while !set.is_empty() {
            let (_, attr, rest) = der(set)?;
            set = rest;
            let (0x06, oid, value) = der(attr)? else {
                return None;
            };
            if oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = der(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_gives_the_role_and_the_map_overrides_it() {
        let map = RoleMap::default();
        assert_eq!(
            map.role_of(&cert("node:unit-1")),
            (Role::Node, "node:unit-1".into())
        );
        assert_eq!(map.role_of(&cert("admin:ops")).0, Role::Admin);
        assert_eq!(map.role_of(&cert("client:app")).0, Role::Client);
        assert_eq!(map.role_of(&cert("bob")).0, Role::Unmapped);
        assert_eq!(map.role_of(&cert("root:bob")).0, Role::Unmapped);
        let mut map = RoleMap::default();
        map.exact.insert("bob".into(), Role::Admin);
        map.exact.insert("client:app".into(), Role::Node);
        assert_eq!(map.role_of(&cert("bob")).0, Role::Admin);
        assert_eq!(map.role_of(&cert("client:app")).0, Role::Node);
    }

    #[test]
    fn damaged_certificates_name_nobody_and_never_panic() {
        let good = cert("client:app");
        assert_eq!(common_name(&good).as_deref(), Some("client:app"));
        for n in 0..good.len() {
            let _ = common_name(&good[..n]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..good.len() {
            let mut bad = good.clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bad[i] ^= (x as u8) | 1;
            let _ = common_name(&bad);
        }
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(RoleMap::default().role_of(b"junk").0, Role::Unmapped);
    }

    #[test]
    fn each_role_may_do_what_it_needs_and_no_more() {
        use Role::*;
        let may = |role, needs| check(role, needs, "it").is_ok();
        assert!([Anyone, Node].iter().all(|r| may(*r, Node)));
        assert!([Admin, Client, Unmapped].iter().all(|r| !may(*r, Node)));
        assert!([Anyone, Node, Admin].iter().all(|r| may(*r, Admin)));
        assert!([Client, Unmapped].iter().all(|r| !may(*r, Admin)));
        assert!([Anyone, Node, Admin, Client]
            .iter()
            .all(|r| may(*r, Client)));
        assert!(!may(Unmapped, Client));
        assert_eq!(
            check(Client, Admin, "seal").unwrap_err(),
            "this certificate has role client; seal needs an admin certificate (see docs/security.md)"
        );
    }
}
