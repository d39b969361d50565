//! Where this process's certificates are (`--tls-dir`, `--tls-name`, the
//! explicit `--tls-ca/--tls-cert/--tls-key`, or `--insecure`), loaded once at
//! start-up: outgoing connections use them from then on
//! ([`trex_net::tls::set_client_config`]) and nodes serve with them.

use crate::error::{usage, CliError};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use trex_net::tls::{Role, RoleMap, TlsConfig, TlsFiles};

/// TLS options, accepted by every command (and as keys of a node's `--config`
/// file: `tls-dir = "…"`).
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Plain TCP, no certificates: anyone who reaches a port can do anything.
    /// For loopback benchmarks only.
    #[arg(
        long,
        global = true,
        env = "TREX_INSECURE",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub insecure: bool,
    /// Directory of certificates from `trex certs init` (ca.pem, NAME.pem,
    /// NAME.key). Clients default to ./trex-data/tls when it exists.
    #[arg(long, global = true, env = "TREX_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Which certificate of --tls-dir to use: NAME.pem and NAME.key. Commands
    /// default to `admin`; a node must name its own (e.g. `unit-1`).
    #[arg(long, global = true, env = "TREX_TLS_NAME")]
    pub tls_name: Option<String>,
    /// The cluster CA's certificate (PEM); overrides --tls-dir.
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate chain (PEM); overrides --tls-dir.
    #[arg(long, global = true)]
    pub tls_cert: Option<PathBuf>,
    /// This process's private key (PEM); overrides --tls-dir.
    #[arg(long, global = true)]
    pub tls_key: Option<PathBuf>,
    /// Servers: certificate common names with a role, NAME=ROLE
    /// (comma-separated; ROLE is node, admin or client). Other names get the
    /// role their prefix names (`node:`, `admin:`, `client:`).
    #[arg(long, global = true, value_delimiter = ',')]
    pub tls_role: Vec<String>,
}

/// Where `trex up` (and so a client run next to it) keeps its certificates.
pub const DEFAULT_DIR: &str = "./trex-data/tls";

static LOADED: OnceLock<Option<TlsConfig>> = OnceLock::new();

/// The TLS setup loaded by [`init`] (`None`: plain TCP).
pub fn loaded() -> Option<TlsConfig> {
    LOADED.get().cloned().flatten()
}

impl TlsArgs {
    /// The role map from `--tls-role`.
    pub fn roles(&self) -> Result<RoleMap, CliError> {
        let mut map = RoleMap::default();
        for item in &self.tls_role {
            let Some((name, role)) = item.rsplit_once('=') else {
                return Err(usage!(
                    "--tls-role \"{item}\" is not NAME=ROLE; e.g. --tls-role alice=admin"
                ));
            };
            let Some(role) = Role::parse(role.trim()) else {
                return Err(usage!(
                    "--tls-role \"{item}\": the role must be node, admin or client"
                ));
            };
            map.exact.insert(name.trim().to_string(), role);
        }
        Ok(map)
    }

    /// The files to load, if TLS is configured: explicit paths win over
    /// `--tls-dir`; a client with neither uses [`DEFAULT_DIR`] when it holds
    /// a CA. `node` is true for a node, which must name its certificate.
    pub fn files(&self, node: bool) -> Result<Option<TlsFiles>, CliError> {
        if self.insecure {
            return Ok(None);
        }
        let default = Path::new(DEFAULT_DIR);
        let dir = match &self.tls_dir {
            Some(d) => Some(d.clone()),
            None if !node && default.join("ca.pem").exists() => Some(default.to_path_buf()),
            None => None,
        };
        let explicit = [&self.tls_ca, &self.tls_cert, &self.tls_key];
        if dir.is_none() && explicit.iter().all(|p| p.is_none()) {
            return Ok(None);
        }
        let name = match (&self.tls_name, node) {
            (Some(n), _) => n.clone(),
            (None, false) => "admin".to_string(),
            (None, true) if self.tls_cert.is_some() && self.tls_key.is_some() => String::new(),
            (None, true) => {
                return Err(usage!(
                    "a node needs its own certificate: add --tls-name NAME (NAME.pem and NAME.key in --tls-dir) or --tls-cert and --tls-key"
                ))
            }
        };
        let from_dir = |file: String| -> Result<PathBuf, CliError> {
            dir.as_ref().map(|d| d.join(&file)).ok_or_else(|| {
                usage!("TLS needs {file}: give --tls-dir DIR, or --tls-ca, --tls-cert and --tls-key (or --insecure for plain TCP)")
            })
        };
        Ok(Some(TlsFiles {
            ca: match &self.tls_ca {
                Some(p) => p.clone(),
                None => from_dir("ca.pem".into())?,
            },
            cert: match &self.tls_cert {
                Some(p) => p.clone(),
                None => from_dir(format!("{name}.pem"))?,
            },
            key: match &self.tls_key {
                Some(p) => p.clone(),
                None => from_dir(format!("{name}.key"))?,
            },
        }))
    }
}

/// Loads the certificates (if any) and makes every outgoing connection of
/// the process use them. Once, before any connection.
pub fn init(args: &TlsArgs, node: bool) -> Result<(), CliError> {
    let config = match args.files(node)? {
        Some(files) => Some(install(&files, args.roles()?)?),
        None => None,
    };
    if node && config.is_none() {
        trex_net::log_line!(
            "WARN",
            "serving without TLS: anyone who reaches this port can do anything; give --tls-dir and --tls-name (see `trex certs init` and docs/security.md)"
        );
    }
    let _ = LOADED.set(config);
    Ok(())
}

/// Loads `files` and makes outgoing connections use them.
pub fn install(files: &TlsFiles, roles: RoleMap) -> Result<TlsConfig, CliError> {
    let config = TlsConfig::load(files, roles).map_err(|e| usage!("{e}"))?;
    trex_net::tls::set_client_config(Some(config.client.clone()));
    Ok(config)
}
