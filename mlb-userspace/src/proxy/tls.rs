//! Certificates: loading PEM files (chain + key in one file, as HAProxy's `crt`), choosing one
//! per handshake by SNI (exact name, then wildcard, then the default), and reloading them without
//! touching established connections.
//!
//! The certificate sets live in an `ArcSwap` snapshot read by a [`ResolvesServerCert`] at each
//! handshake, so a reload is one pointer swap and the `rustls::ServerConfig`s never change.
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tracing::{info, warn};

use super::tls_policy::TlsPolicy;
use super::{ProxyError, Shared};
use crate::model::{TlsOptions, TlsVersion};

/// Certificates for one frontend, indexed by the names they are valid for.
#[derive(Default)]
pub struct CertSnapshot {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates, keyed by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSnapshot")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl CertSnapshot {
    fn add(&mut self, cert: &LoadedCert) {
        for name in &cert.names {
            if let Some(parent) = name.strip_prefix("*.") {
                self.wildcard
                    .entry(parent.to_owned())
                    .or_insert_with(|| cert.key.clone());
            } else {
                self.exact
                    .entry(name.clone())
                    .or_insert_with(|| cert.key.clone());
            }
        }
        if self.default.is_none() {
            self.default = Some(cert.key.clone());
        }
    }

    /// The certificate for `name` (lowercase): exact, then wildcard, then the default.
    pub fn resolve(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = name.and_then(|name| {
            self.exact.get(name).cloned().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).cloned()
            })
        });
        by_name.or_else(|| self.default.clone())
    }

    fn is_empty(&self) -> bool {
        self.default.is_none()
    }
}

/// The certificate snapshots of every TLS frontend.
#[derive(Debug, Default)]
struct Snapshots {
    /// `:443`: `--ssl-certs`, then every service's `HAPROXY_{n}_SSL_CERT`, then the self-signed
    /// default.
    vhost: Arc<CertSnapshot>,
    /// TLS service ports: that service's own certificates.
    ports: HashMap<u16, Arc<CertSnapshot>>,
}

/// One certificate file's content.
#[derive(Clone)]
struct LoadedCert {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    stamp: FileStamp,
}

/// What a file looked like when read: reloaded when it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// Loads, indexes and reloads the certificates; hands out the rustls server configs.
pub struct CertManager {
    global_paths: Vec<PathBuf>,
    /// `--ssl-certs-dir`: where label-named files must be (canonical); empty: anywhere.
    label_dirs: Vec<PathBuf>,
    service_paths: Mutex<HashMap<u16, Vec<PathBuf>>>,
    /// Last good version of each file (kept when a new version fails to load).
    files: Mutex<HashMap<PathBuf, LoadedCert>>,
    /// How each file looked at the last load attempt, good or not: the watcher reloads only
    /// when this changes, so a broken file is reported once, not at every poll.
    seen: Mutex<HashMap<PathBuf, Option<FileStamp>>>,
    snapshots: Arc<ArcSwap<Snapshots>>,
    self_signed: LoadedCert,
    vhost_config: Arc<ServerConfig>,
    port_configs: Mutex<HashMap<u16, Arc<ServerConfig>>>,
    /// `HAPROXY_{n}_BIND_OPTIONS` TLS settings of each TLS service port.
    port_options: Mutex<HashMap<u16, TlsOptions>>,
    /// Versions, suites and groups every frontend offers.
    policy: TlsPolicy,
}

impl CertManager {
    /// A manager for `--ssl-certs` paths (files or directories). Nothing is read until
    /// [`CertManager::reload`].
    /// `label_dirs` (`--ssl-certs-dir`), when not empty, are the only directories whose files
    /// labels may name.
    pub fn new(global_paths: &[PathBuf], label_dirs: &[PathBuf]) -> CertManager {
        Self::with_policy(global_paths, label_dirs, TlsPolicy::default())
    }

    /// [`CertManager::new`] with a TLS policy other than rustls's defaults.
    pub fn with_policy(
        global_paths: &[PathBuf],
        label_dirs: &[PathBuf],
        policy: TlsPolicy,
    ) -> CertManager {
        let snapshots = Arc::new(ArcSwap::from_pointee(Snapshots::default()));
        let resolver = Arc::new(SniResolver {
            snapshots: snapshots.clone(),
            port: None,
        });
        let vhost_config = server_config(resolver, &policy);
        CertManager {
            global_paths: global_paths.to_vec(),
            label_dirs: label_dirs
                .iter()
                .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
                .collect(),
            service_paths: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            snapshots,
            self_signed: self_signed(),
            vhost_config,
            port_configs: Mutex::new(HashMap::new()),
            port_options: Mutex::new(HashMap::new()),
            policy,
        }
    }

    /// The TLS config of `:443`.
    pub fn vhost_config(&self) -> Arc<ServerConfig> {
        self.vhost_config.clone()
    }

    /// The TLS config of a service port, or `None` when that service has no certificate (plain
    /// HTTP on it).
    pub fn port_config(&self, port: u16) -> Option<Arc<ServerConfig>> {
        if !self.snapshots.load().ports.contains_key(&port) {
            return None;
        }
        let mut configs = self
            .port_configs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let config = configs.entry(port).or_insert_with(|| {
            let resolver = Arc::new(SniResolver {
                snapshots: self.snapshots.clone(),
                port: Some(port),
            });
            server_config(resolver, &self.policy)
        });
        Some(config.clone())
    }

    /// Sets the TLS options (ALPN, protocol versions, client certificates) of the TLS service
    /// ports. A port whose options changed gets a new `ServerConfig` for its next handshakes;
    /// open connections keep theirs. Options that cannot be used (an unreadable CA file) make
    /// that port refuse handshakes rather than serve without the client check it asked for.
    pub fn set_port_options(&self, by_port: HashMap<u16, TlsOptions>) -> Vec<ProxyError> {
        let gone: Vec<u16> = {
            let options = self
                .port_options
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            options
                .keys()
                .filter(|p| !by_port.contains_key(p))
                .copied()
                .collect()
        };
        let changes = gone
            .into_iter()
            .map(|p| (p, None))
            .chain(by_port.into_iter().map(|(p, o)| (p, Some(o))));
        self.update_port_options(changes)
    }

    /// The targeted form of [`CertManager::set_port_options`]: sets (`Some`) or clears (`None`)
    /// the TLS options of the ports named; the others are untouched.
    pub fn update_port_options(
        &self,
        changes: impl IntoIterator<Item = (u16, Option<TlsOptions>)>,
    ) -> Vec<ProxyError> {
        let mut errors = Vec::new();
        let mut options = self
            .port_options
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut configs = self
            .port_configs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (port, opts) in changes {
            let Some(opts) = opts else {
                if options.remove(&port).is_some() {
                    configs.remove(&port);
                }
                continue;
            };
            if options.get(&port) == Some(&opts) {
                continue;
            }
            let resolver = Arc::new(SniResolver {
                snapshots: self.snapshots.clone(),
                port: Some(port),
            });
            let config = match server_config_with(resolver, &opts, &self.policy) {
                Ok(config) => config,
                Err(e) => {
                    errors.push(e);
                    server_config(Arc::new(RefuseAll), &self.policy)
                }
            };
            configs.insert(port, config);
            options.insert(port, opts);
        }
        errors
    }

    /// Whether names `a` and `b` get the same certificate on a frontend (`port`: a service
    /// port, `None`: `:443`). A request whose Host gets another certificate than its SNI did is
    /// misdirected (421): the client reused a connection for a name it was not made for.
    pub fn same_certificate(&self, port: Option<u16>, a: &str, b: &str) -> bool {
        let snaps = self.snapshots.load();
        let snap = port
            .and_then(|p| snaps.ports.get(&p))
            .unwrap_or(&snaps.vhost);
        match (snap.resolve(Some(a)), snap.resolve(Some(b))) {
            (Some(x), Some(y)) => Arc::ptr_eq(&x, &y),
            _ => true,
        }
    }

    /// Sets the certificate files of the TLS service ports (from `HAPROXY_{n}_SSL_CERT`) and
    /// rebuilds the snapshots.
    pub fn set_service_certs(&self, by_port: HashMap<u16, Vec<PathBuf>>) -> Vec<ProxyError> {
        {
            let mut paths = self
                .service_paths
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *paths == by_port {
                return Vec::new();
            }
            *paths = by_port;
        }
        self.rebuild(false)
    }

    /// The targeted form of [`CertManager::set_service_certs`]: sets (`Some`) or clears (`None`)
    /// the certificate files of the ports named; the snapshots are rebuilt only if that changed
    /// anything.
    pub fn update_service_certs(
        &self,
        changes: impl IntoIterator<Item = (u16, Option<Vec<PathBuf>>)>,
    ) -> Vec<ProxyError> {
        let mut changed = false;
        {
            let mut paths = self
                .service_paths
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (port, files) in changes {
                changed |= match files {
                    Some(files) if paths.get(&port) == Some(&files) => false,
                    Some(files) => {
                        paths.insert(port, files);
                        true
                    }
                    None => paths.remove(&port).is_some(),
                };
            }
        }
        if changed {
            self.rebuild(false)
        } else {
            Vec::new()
        }
    }

    /// Whether a label may name `path`: inside a `--ssl-certs-dir` once symlinks and `..` are
    /// resolved (a label must not read arbitrary host files), or anywhere without the flag.
    fn label_path_allowed(&self, path: &Path) -> bool {
        if self.label_dirs.is_empty() {
            return true;
        }
        std::fs::canonicalize(path)
            .is_ok_and(|real| self.label_dirs.iter().any(|dir| real.starts_with(dir)))
    }

    /// Re-reads every certificate file and swaps in the new snapshots.
    pub fn reload(&self) -> Vec<ProxyError> {
        self.rebuild(true)
    }

    /// Every certificate file now configured, directories expanded.
    fn all_files(&self) -> Vec<PathBuf> {
        let service_paths = self
            .service_paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ports: Vec<&u16> = service_paths.keys().collect();
        ports.sort();
        let mut files = expand(&self.global_paths);
        for port in ports {
            files.extend(expand(&service_paths[port]));
        }
        files
    }

    /// Whether any certificate file changed since it was loaded.
    fn changed_on_disk(&self) -> bool {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.all_files()
            .iter()
            .any(|path| seen.get(path) != Some(&stamp(path)))
    }

    fn rebuild(&self, reread: bool) -> Vec<ProxyError> {
        let mut errors = Vec::new();
        let mut files = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut load = |path: &Path, errors: &mut Vec<ProxyError>| -> Option<LoadedCert> {
            let current = stamp(path);
            seen.insert(path.to_owned(), current.clone());
            if let Some(cached) = files.get(path)
                && (!reread || Some(&cached.stamp) == current.as_ref())
            {
                return Some(cached.clone());
            }
            match load_file(path) {
                Ok(cert) => {
                    info!(path = %path.display(), names = ?cert.names, "certificate loaded");
                    files.insert(path.to_owned(), cert.clone());
                    Some(cert)
                }
                Err(reason) => {
                    errors.push(ProxyError::Cert {
                        path: path.to_owned(),
                        reason,
                    });
                    // Keep serving the last good version of this file, if there is one.
                    files.get(path).cloned()
                }
            }
        };
        let service_paths = self
            .service_paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut vhost = CertSnapshot::default();
        for path in expand(&self.global_paths) {
            if let Some(cert) = load(&path, &mut errors) {
                vhost.add(&cert);
            }
        }
        let mut ports_sorted: Vec<(&u16, &Vec<PathBuf>)> = service_paths.iter().collect();
        ports_sorted.sort();
        let mut ports = HashMap::new();
        for (port, paths) in ports_sorted {
            let mut snap = CertSnapshot::default();
            let (allowed, refused): (Vec<PathBuf>, Vec<PathBuf>) = paths
                .iter()
                .cloned()
                .partition(|p| self.label_path_allowed(p));
            let expanded = expand(&allowed);
            let (expanded, escaped): (Vec<PathBuf>, Vec<PathBuf>) = expanded
                .into_iter()
                .partition(|p| self.label_path_allowed(p));
            for path in refused.into_iter().chain(escaped) {
                errors.push(ProxyError::Cert {
                    path,
                    reason: "outside the --ssl-certs-dir directories".into(),
                });
            }
            for path in expanded {
                if let Some(cert) = load(&path, &mut errors) {
                    snap.add(&cert);
                    vhost.add(&cert);
                }
            }
            if snap.is_empty() {
                // Serve TLS anyway (with the :443 certificates) rather than plain HTTP.
                snap.add(&self.self_signed);
            }
            ports.insert(*port, Arc::new(snap));
        }
        if vhost.is_empty() {
            vhost.add(&self.self_signed);
        }
        self.snapshots.store(Arc::new(Snapshots {
            vhost: Arc::new(vhost),
            ports,
        }));
        errors
    }
}

/// Resolves the certificate of each handshake from the current snapshot.
#[derive(Debug)]
struct SniResolver {
    snapshots: Arc<ArcSwap<Snapshots>>,
    port: Option<u16>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let snaps = self.snapshots.load();
        let snap = match self.port {
            Some(p) => snaps.ports.get(&p).unwrap_or(&snaps.vhost),
            None => &snaps.vhost,
        };
        snap.resolve(name.as_deref())
    }
}

/// A resolver with no certificate: every handshake fails (a port whose TLS options are broken).
#[derive(Debug)]
struct RefuseAll;

impl ResolvesServerCert for RefuseAll {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// A `ServerConfig` with a service port's `BIND_OPTIONS`: `ssl-min-ver`/`ssl-max-ver` (rustls
/// speaks TLS 1.2 and 1.3 only), `alpn`, and `verify optional|required` with `ca-file`.
fn server_config_with(
    resolver: Arc<dyn ResolvesServerCert>,
    opts: &TlsOptions,
    policy: &TlsPolicy,
) -> Result<Arc<ServerConfig>, ProxyError> {
    let provider = Arc::new(policy.provider());
    let min = opts
        .min_version
        .unwrap_or(TlsVersion::Tls12)
        .max(policy.min_version);
    let max = opts.max_version.unwrap_or(TlsVersion::Tls13);
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if (min..=max).contains(&TlsVersion::Tls13) {
        versions.push(&rustls::version::TLS13);
    }
    if (min..=max).contains(&TlsVersion::Tls12) {
        versions.push(&rustls::version::TLS12);
    }
    let bad = |path: &Path, reason: String| ProxyError::Cert {
        path: path.to_owned(),
        reason,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| {
            bad(
                Path::new("BIND_OPTIONS"),
                format!("ssl-min-ver/ssl-max-ver: {e}"),
            )
        })?;
    let builder = match &opts.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let path = &auth.ca_file;
            let mut roots = rustls::RootCertStore::empty();
            let pem = read_pem_file(path).map_err(|e| bad(path, format!("ca-file: {e}")))?;
            let certs = CertificateDer::pem_slice_iter(&pem);
            for cert in certs {
                let cert = cert.map_err(|e| bad(path, format!("ca-file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(path, format!("ca-file: {e}")))?;
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if !auth.required {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| bad(path, format!("ca-file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = if opts.alpn.is_empty() {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        opts.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
    };
    Ok(Arc::new(config))
}

fn server_config(resolver: Arc<dyn ResolvesServerCert>, policy: &TlsPolicy) -> Arc<ServerConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match policy.min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(policy.provider()))
        .with_protocol_versions(versions)
        .expect("the policy was checked when the flags were read")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Files named by `paths`: files as given, directories expanded to their files (sorted; key,
/// OCSP and issuer side files skipped, as HAProxy does).
fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.retain(|p| {
                p.is_file()
                    && !matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("key" | "ocsp" | "issuer" | "sctl")
                    )
            });
            entries.sort();
            out.extend(entries);
        } else {
            out.push(path.clone());
        }
    }
    out
}

/// Largest certificate or CA file read: a chain and key, or a CA bundle, is a few hundred KiB
/// at most.
const MAX_PEM_FILE: u64 = 4 << 20;

/// Reads a PEM file named by a flag or a label without ever blocking on it or reading without
/// bound: opened non-blocking (a FIFO with no writer does not hang the open), then only a
/// regular file of at most [`MAX_PEM_FILE`] bytes is read (not a FIFO, device or socket such as
/// `/dev/zero`).
fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file (a FIFO, device or directory is never read)".into());
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(format!(
            "{} bytes: larger than the {MAX_PEM_FILE}-byte limit",
            meta.len()
        ));
    }
    let mut pem = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| e.to_string())?;
    if pem.len() as u64 > MAX_PEM_FILE {
        return Err(format!("larger than the {MAX_PEM_FILE}-byte limit"));
    }
    Ok(pem)
}

fn load_file(path: &Path) -> Result<LoadedCert, String> {
    let before = stamp(path).ok_or("cannot be read")?;
    let pem = read_pem_file(path)?;
    let (key, names) = parse_pem(&pem)?;
    Ok(LoadedCert {
        key,
        names,
        stamp: before,
    })
}

/// A certified key and its DNS names from a PEM holding the chain (leaf first) and the key.
fn parse_pem(pem: &[u8]) -> Result<(Arc<CertifiedKey>, Vec<String>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("no certificate in the file (want the chain, then the key)".into());
    };
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("no usable private key in the file: {e}"))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let names = dns_names(leaf)?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    Ok((Arc::new(certified), names))
}

fn dns_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("certificate cannot be parsed: {e}"))?;
    Ok(cert
        .valid_dns_names()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect())
}

/// The certificate served when none is configured: generated at start, for `localhost`.
fn self_signed() -> LoadedCert {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("generating a self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).expect("rcgen key is supported");
    warn!(
        "no certificate given; TLS frontends use a self-signed certificate for localhost until one is"
    );
    LoadedCert {
        key: Arc::new(CertifiedKey::new(
            vec![generated.cert.der().clone()],
            signing_key,
        )),
        names: vec![],
        stamp: FileStamp {
            modified: None,
            len: 0,
        },
    }
}

/// Reloads the certificates when a file changes (checked every `cert_poll_interval`), until the
/// proxy is dropped.
pub(crate) async fn watch_certs(shared: Weak<Shared>) {
    loop {
        let interval = match shared.upgrade() {
            Some(s) => s.config.cert_poll_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.certs.changed_on_disk() {
            info!("certificate files changed; reloading");
            for e in shared.certs.reload() {
                warn!(error = %e, "certificate not reloaded");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_for(names: &[&str]) -> Vec<u8> {
        let c = rcgen::generate_simple_self_signed(
            names
                .iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        format!("{}{}", c.cert.pem(), c.key_pair.serialize_pem()).into_bytes()
    }

    fn loaded(names: &[&str]) -> LoadedCert {
        let (key, names) = parse_pem(&pem_for(names)).unwrap();
        LoadedCert {
            key,
            names,
            stamp: FileStamp {
                modified: None,
                len: 0,
            },
        }
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let default = loaded(&["default.test"]);
        let wild = loaded(&["*.example.com"]);
        let exact = loaded(&["www.example.com"]);
        let mut snap = CertSnapshot::default();
        for c in [&default, &wild, &exact] {
            snap.add(c);
        }
        let is = |name: Option<&str>, want: &LoadedCert| {
            Arc::ptr_eq(&snap.resolve(name).unwrap(), &want.key)
        };
        assert!(is(Some("www.example.com"), &exact));
        assert!(is(Some("api.example.com"), &wild));
        assert!(
            is(Some("a.b.example.com"), &default),
            "wildcards cover one label"
        );
        assert!(is(Some("other.test"), &default));
        assert!(is(None, &default));
    }

    #[test]
    fn pem_without_key_or_with_the_wrong_key_is_refused() {
        let c = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let err = parse_pem(c.cert.pem().as_bytes()).unwrap_err();
        assert!(err.contains("private key"), "{err}");
        let other = rcgen::KeyPair::generate().unwrap();
        let mixed = format!("{}{}", c.cert.pem(), other.serialize_pem());
        let err = parse_pem(mixed.as_bytes()).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn a_broken_file_is_reported_once_and_reloaded_when_fixed() {
        let dir = std::env::temp_dir().join(format!("mlb-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("site.pem");
        std::fs::write(&path, b"not a certificate").unwrap();
        let manager = CertManager::new(std::slice::from_ref(&path), &[]);
        assert_eq!(manager.reload().len(), 1);
        assert!(
            !manager.changed_on_disk(),
            "nothing new to try until the file changes"
        );
        std::fs::write(&path, pem_for(&["site.test"])).unwrap();
        assert!(manager.changed_on_disk());
        assert!(manager.reload().is_empty());
        assert!(!manager.changed_on_disk());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A label naming a FIFO (nobody writing: `open` would block forever) or `/dev/zero` (never
    /// ends) is an error at once, and a too-large file is refused without reading it all.
    #[test]
    fn fifos_devices_and_huge_files_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("mlb-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("cert.fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let start = std::time::Instant::now();
        let e = read_pem_file(&fifo).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let Err(e) = load_file(Path::new("/dev/zero")) else {
            panic!("/dev/zero loaded")
        };
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.join("big.pem");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_PEM_FILE + 1)
            .unwrap();
        let e = read_pem_file(&big).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// With `--ssl-certs-dir`, a label naming a file elsewhere (directly, through `..` or a
    /// symlink) is refused without being read; one inside is loaded.
    #[test]
    fn label_certificates_must_be_inside_the_allowed_directories() {
        let root = std::env::temp_dir().join(format!("mlb-certs-dir-{}", std::process::id()));
        let (inside, outside) = (root.join("allowed"), root.join("other"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(inside.join("ok.pem"), pem_for(&["ok.test"])).unwrap();
        std::fs::write(outside.join("secret.pem"), pem_for(&["secret.test"])).unwrap();
        let link = inside.join("link.pem");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(outside.join("secret.pem"), &link).unwrap();
        let manager = CertManager::new(&[], std::slice::from_ref(&inside));
        let dotdot = inside.join("../other/secret.pem");
        let errors = manager.set_service_certs(HashMap::from([
            (1001, vec![inside.join("ok.pem")]),
            (1002, vec![outside.join("secret.pem"), dotdot, link]),
        ]));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors
                .iter()
                .all(|e| e.to_string().contains("--ssl-certs-dir"))
        );
        let read = manager.files.lock().unwrap();
        assert!(
            read.contains_key(&inside.join("ok.pem")),
            "the allowed file is loaded"
        );
        assert_eq!(read.len(), 1, "nothing outside was read: {:?}", read.keys());
        drop(read);
        let _ = std::fs::remove_dir_all(&root);
    }
}
