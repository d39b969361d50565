//! `trex certs init`: a cluster CA and the certificates of its nodes, an
//! admin and a client, for a local or lab cluster (docs/security.md).
//!
//! Files in DIR: `ca.pem` and `ca.key` (keep the key away from the nodes),
//! then `NAME.pem` and `NAME.key` for every node, admin and client. A node's
//! certificate has common name `node:NAME`, the host names and addresses it
//! is reached at (`--host`), and may serve and connect (server and client
//! authentication); an admin's or client's has `admin:NAME` or `client:NAME`
//! and may only connect. Run again, it keeps what exists and adds what is
//! missing, signed by the same CA.

use crate::error::CliError;
use clap::{Args, Subcommand};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// `trex certs …`.
#[derive(Subcommand)]
pub enum CertsCmd {
    /// Write a CA and per-node, admin and client certificates into DIR
    /// (missing ones only; an existing CA is reused).
    Init(InitArgs),
}

/// `trex certs init`.
#[derive(Args)]
pub struct InitArgs {
    /// Where to write them.
    #[arg(long, default_value = crate::tls::DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Node certificates to write (comma-separated names).
    #[arg(long, value_delimiter = ',', default_value = "node")]
    pub node: Vec<String>,
    /// Host names and IP addresses the nodes are reached at, besides
    /// 127.0.0.1, ::1 and localhost (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub host: Vec<String>,
    /// Admin certificates to write (comma-separated names).
    #[arg(long, value_delimiter = ',', default_value = "admin")]
    pub admin: Vec<String>,
    /// Client certificates to write (comma-separated names).
    #[arg(long, value_delimiter = ',', default_value = "client")]
    pub client: Vec<String>,
}

/// Runs `trex certs`.
pub fn run(cmd: CertsCmd) -> Result<(), CliError> {
    match cmd {
        CertsCmd::Init(a) => {
            let mut want: Vec<(Kind, String)> = Vec::new();
            want.extend(a.node.iter().map(|n| (Kind::Node, n.clone())));
            want.extend(a.admin.iter().map(|n| (Kind::Admin, n.clone())));
            want.extend(a.client.iter().map(|n| (Kind::Client, n.clone())));
            let written = ensure(&a.dir, &want, &a.host)?;
            for f in &written {
                println!("wrote {}", f.display());
            }
            if written.is_empty() {
                println!("{}: every certificate asked for exists", a.dir.display());
            }
            Ok(())
        }
    }
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A node: serves, and connects to other nodes.
    Node,
    /// An operator.
    Admin,
    /// An application.
    Client,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Admin => "admin",
            Kind::Client => "client",
        }
    }
}

fn fail(what: &str, path: &Path, e: impl std::fmt::Display) -> CliError {
    format!("cannot {what} {}: {e}", path.display()).into()
}

fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail("write", path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| fail("write", path, e))
}

/// Ten years from January 1st of this year (a lab cluster's certificates).
fn validity(p: &mut CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let year = 1970 + (secs / 31_556_952) as i32;
    p.not_before = date_time_ymd(year, 1, 1);
    p.not_after = date_time_ymd(year + 10, 1, 1);
}

/// The CA's parameters; its name carries a digest of its key (FNV-1a), so
/// that two clusters' CAs differ by name (a certificate of the other one is
/// refused as of an unknown issuer) and the same key always gives the same name.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let digest = key
        .public_key_raw()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("Trex Corfu cluster CA {:08x}", digest as u32),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p);
    p
}

/// Writes the CA (unless DIR has one) and every certificate of `want` that
/// DIR lacks; returns the files written.
pub fn ensure(
    dir: &Path,
    want: &[(Kind, String)],
    hosts: &[String],
) -> Result<Vec<PathBuf>, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
    let mut written = Vec::new();
    let (ca_pem, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_key = if ca_key_path.exists() {
        let text =
            std::fs::read_to_string(&ca_key_path).map_err(|e| fail("read", &ca_key_path, e))?;
        KeyPair::from_pem(&text).map_err(|e| fail("use the CA key", &ca_key_path, e))?
    } else {
        let key = KeyPair::generate().map_err(|e| fail("make a key for", &ca_key_path, e))?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        written.push(ca_key_path.clone());
        key
    };
    // The same name and key as the CA written first: what it signs verifies
    // against ca.pem (issuer name and key identifier match).
    let ca = ca_params(&ca_key)
        .self_signed(&ca_key)
        .map_err(|e| fail("sign", &ca_pem, e))?;
    if !ca_pem.exists() {
        std::fs::write(&ca_pem, ca.pem()).map_err(|e| fail("write", &ca_pem, e))?;
        written.push(ca_pem.clone());
    }
    for (kind, name) in want {
        let (pem, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        if pem.exists() && key_path.exists() {
            continue;
        }
        let mut sans = vec!["127.0.0.1".to_string(), "::1".into(), "localhost".into()];
        sans.extend(hosts.iter().cloned());
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{}:{name}", kind.prefix()));
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if *kind == Kind::Node {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            for h in &sans {
                p.subject_alt_names
                    .push(match h.parse::<std::net::IpAddr>() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => SanType::DnsName(
                            h.clone()
                                .try_into()
                                .map_err(|e| fail("use the host name in", &pem, e))?,
                        ),
                    });
            }
        }
        validity(&mut p);
        let key = KeyPair::generate().map_err(|e| fail("make a key for", &pem, e))?;
        let cert = p
            .signed_by(&key, &ca, &ca_key)
            .map_err(|e| fail("sign", &pem, e))?;
        let _ = std::fs::remove_file(&key_path);
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&pem, cert.pem()).map_err(|e| fail("write", &pem, e))?;
        written.push(pem);
        written.push(key_path);
    }
    Ok(written)
}
