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
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
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
use super::{
    ProxyError, Shared,
    cert_files::{
        FileRead, FileStamp, READ_BUDGET, Reader, off_runtime, read_by, read_if_changed, stamp,
    },
};
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
    /// Bumped at each change of `service_paths`, under its lock.
    generation: AtomicU64,
    /// Held only to store a snapshot (never across I/O).
    storing: Mutex<()>,
    /// How files are read (a stand-in that hangs in tests), and how long one reload waits.
    reader: Reader,
    read_budget: std::time::Duration,
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
            generation: AtomicU64::new(0),
            storing: Mutex::new(()),
            reader: read_if_changed,
            read_budget: READ_BUDGET,
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
    /// the TLS options of the ports named; the others are untouched. CA files are read first,
    /// off the runtime and with no lock held (handshakes look the port configs up).
    pub fn update_port_options(
        &self,
        changes: impl IntoIterator<Item = (u16, Option<TlsOptions>)>,
    ) -> Vec<ProxyError> {
        let changes: Vec<(u16, Option<TlsOptions>)> = {
            let options = lock(&self.port_options);
            changes
                .into_iter()
                .filter(|(port, opts)| match opts {
                    Some(opts) => options.get(port) != Some(opts),
                    None => options.contains_key(port),
                })
                .collect()
        };
        let deadline = std::time::Instant::now() + self.read_budget;
        let mut errors = Vec::new();
        // Each port's new options and config; `None`: cleared.
        type Built = (u16, Option<(TlsOptions, Arc<ServerConfig>)>);
        let built: Vec<Built> = off_runtime(|| {
            changes
                .into_iter()
                .map(|(port, opts)| {
                    let built = opts.map(|opts| {
                        let config = self.port_config_with(port, &opts, deadline);
                        let config = config.unwrap_or_else(|e| {
                            errors.push(e);
                            server_config(Arc::new(RefuseAll), &self.policy)
                        });
                        (opts, config)
                    });
                    (port, built)
                })
                .collect()
        });
        let mut options = lock(&self.port_options);
        let mut configs = lock(&self.port_configs);
        for (port, built) in built {
            if let Some((opts, config)) = built {
                configs.insert(port, config);
                options.insert(port, opts);
            } else {
                configs.remove(&port);
                options.remove(&port);
            }
        }
        errors
    }

    /// The `ServerConfig` of a TLS service port with `opts`, its CA file (if any) read by a
    /// reader thread until `deadline`.
    fn port_config_with(
        &self,
        port: u16,
        opts: &TlsOptions,
        deadline: std::time::Instant,
    ) -> Result<Arc<ServerConfig>, ProxyError> {
        let ca_pem = opts.client_auth.as_ref().map(|auth| {
            match read_by(self.reader, &auth.ca_file, None, deadline) {
                Ok(FileRead { pem: Some(pem), .. }) => pem,
                Ok(FileRead { pem: None, .. }) => Err("cannot be read".into()),
                Err(e) => Err(e),
            }
        });
        let resolver = Arc::new(SniResolver {
            snapshots: self.snapshots.clone(),
            port: Some(port),
        });
        server_config_with(resolver, opts, ca_pem, &self.policy)
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
            self.generation.fetch_add(1, Ordering::SeqCst);
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
            if changed {
                self.generation.fetch_add(1, Ordering::SeqCst);
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

    /// Whether any certificate file changed since it was loaded. Stats files: the watcher calls
    /// it off the runtime, and no lock is held meanwhile.
    fn changed_on_disk(&self) -> bool {
        let seen = lock(&self.seen).clone();
        self.all_files()
            .iter()
            .any(|path| seen.get(path) != Some(&stamp(path)))
    }

    /// Reads what changed (or, with `reread`, what changed on disk) and swaps in new snapshots.
    /// Files are read off the runtime, each on a reader thread within one [`READ_BUDGET`] for
    /// them all, and no lock is held while reading: handshakes and other applies go on.
    fn rebuild(&self, reread: bool) -> Vec<ProxyError> {
        off_runtime(|| {
            loop {
                let (service_paths, generation) = {
                    let paths = lock(&self.service_paths);
                    (paths.clone(), self.generation.load(Ordering::SeqCst))
                };
                let (snapshots, errors) = self.read_snapshots(&service_paths, reread);
                let _storing = lock(&self.storing);
                // Labels changed while this one read: the other apply's snapshot must not be
                // replaced by this older one. Again with the new labels (what was read is
                // cached, and a file still hanging fails at once).
                if self.generation.load(Ordering::SeqCst) == generation {
                    self.snapshots.store(Arc::new(snapshots));
                    return errors;
                }
            }
        })
    }

    /// Reads the files of `service_paths` (and `--ssl-certs`) and makes the snapshots.
    fn read_snapshots(
        &self,
        service_paths: &HashMap<u16, Vec<PathBuf>>,
        reread: bool,
    ) -> (Snapshots, Vec<ProxyError>) {
        let mut errors = Vec::new();
        let global = expand(&self.global_paths);
        let mut ports_sorted: Vec<(&u16, &Vec<PathBuf>)> = service_paths.iter().collect();
        ports_sorted.sort();
        let ports: Vec<(u16, Vec<PathBuf>)> = ports_sorted
            .into_iter()
            .map(|(port, paths)| (*port, self.label_files(paths, &mut errors)))
            .collect();
        let deadline = std::time::Instant::now() + self.read_budget;
        let mut loaded = HashMap::new();
        for path in global.iter().chain(ports.iter().flat_map(|(_, p)| p)) {
            if !loaded.contains_key(path)
                && let Some(cert) = self.load(path, reread, deadline, &mut errors)
            {
                loaded.insert(path.clone(), cert);
            }
        }
        (self.snapshots_of(&global, &ports, &loaded), errors)
    }

    /// The files of a service's `SSL_CERT` labels that it may read (directories expanded); the
    /// others are errors.
    fn label_files(&self, paths: &[PathBuf], errors: &mut Vec<ProxyError>) -> Vec<PathBuf> {
        let (allowed, refused): (Vec<PathBuf>, Vec<PathBuf>) = paths
            .iter()
            .cloned()
            .partition(|p| self.label_path_allowed(p));
        let (expanded, escaped): (Vec<PathBuf>, Vec<PathBuf>) = expand(&allowed)
            .into_iter()
            .partition(|p| self.label_path_allowed(p));
        for path in refused.into_iter().chain(escaped) {
            errors.push(ProxyError::Cert {
                path,
                reason: "outside the --ssl-certs-dir directories".into(),
            });
        }
        expanded
    }

    /// The certificate of `path`: the cached one unless `reread` finds the file changed, else
    /// read now (the cache lock is taken only around lookups and stores, never across the read).
    /// A file that fails keeps its last good version.
    fn load(
        &self,
        path: &Path,
        reread: bool,
        deadline: std::time::Instant,
        errors: &mut Vec<ProxyError>,
    ) -> Option<LoadedCert> {
        let cached = lock(&self.files).get(path).cloned();
        if let Some(cert) = &cached
            && !reread
        {
            return Some(cert.clone());
        }
        let known = cached.as_ref().map(|c| c.stamp.clone());
        let read = read_by(self.reader, path, known, deadline);
        if let Ok(read) = &read {
            lock(&self.seen).insert(path.to_owned(), read.stamp.clone());
        }
        let fail = |reason: String, errors: &mut Vec<ProxyError>| {
            errors.push(ProxyError::Cert {
                path: path.to_owned(),
                reason,
            });
            cached.clone()
        };
        match read {
            Err(reason) => fail(reason, errors),
            Ok(FileRead { pem: None, .. }) => cached.clone(),
            Ok(FileRead {
                pem: Some(Err(reason)),
                ..
            }) => fail(reason, errors),
            Ok(FileRead {
                stamp,
                pem: Some(Ok(pem)),
            }) => match parse_cert(&pem, stamp) {
                Ok(cert) => {
                    info!(path = %path.display(), names = ?cert.names, "certificate loaded");
                    lock(&self.files).insert(path.to_owned(), cert.clone());
                    Some(cert)
                }
                Err(reason) => fail(reason, errors),
            },
        }
    }

    /// The snapshots of `:443` and of each TLS service port from the certificates loaded.
    fn snapshots_of(
        &self,
        global: &[PathBuf],
        ports: &[(u16, Vec<PathBuf>)],
        loaded: &HashMap<PathBuf, LoadedCert>,
    ) -> Snapshots {
        let mut vhost = CertSnapshot::default();
        for cert in global.iter().filter_map(|p| loaded.get(p)) {
            vhost.add(cert);
        }
        let mut by_port = HashMap::new();
        for (port, paths) in ports {
            let mut snap = CertSnapshot::default();
            for cert in paths.iter().filter_map(|p| loaded.get(p)) {
                snap.add(cert);
                vhost.add(cert);
            }
            if snap.is_empty() {
                // Serve TLS anyway (with the :443 certificates) rather than plain HTTP.
                snap.add(&self.self_signed);
            }
            by_port.insert(*port, Arc::new(snap));
        }
        if vhost.is_empty() {
            vhost.add(&self.self_signed);
        }
        Snapshots {
            vhost: Arc::new(vhost),
            ports: by_port,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    ca_pem: Option<Result<Vec<u8>, String>>,
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
    let builder = match (&opts.client_auth, ca_pem) {
        (None, _) => builder.with_no_client_auth(),
        (Some(auth), ca_pem) => {
            let path = &auth.ca_file;
            let mut roots = rustls::RootCertStore::empty();
            let pem = ca_pem
                .unwrap_or_else(|| Err("not read".into()))
                .map_err(|e| bad(path, format!("ca-file: {e}")))?;
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

fn parse_cert(pem: &[u8], stamp: Option<FileStamp>) -> Result<LoadedCert, String> {
    let stamp = stamp.ok_or("cannot be read")?;
    let (key, names) = parse_pem(pem)?;
    Ok(LoadedCert { key, names, stamp })
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
        // Stats and reads on the blocking pool: a file on a hung mount stalls this watcher,
        // never a runtime worker.
        let check = tokio::task::spawn_blocking(move || {
            if shared.certs.changed_on_disk() {
                info!("certificate files changed; reloading");
                for e in shared.certs.reload() {
                    warn!(error = %e, "certificate not reloaded");
                }
            }
        });
        let _ = check.await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::cert_files::{MAX_PEM_FILE, read_pem_file};
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
        let Err(e) = read_pem_file(Path::new("/dev/zero")) else {
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

    /// A certificate label whose read hangs (a file on a hung mount) costs an apply at most the
    /// read budget and is reported naming the file; while it hangs, handshakes' config lookups,
    /// other ports' TLS options and other services' certificates go on at once, and the file is
    /// not read again (each apply would wait for it).
    #[test]
    fn a_hung_certificate_read_blocks_nothing() {
        fn reader(path: &Path, known: Option<FileStamp>) -> FileRead {
            if path.ends_with("hung.pem") {
                std::thread::sleep(std::time::Duration::from_secs(30));
            }
            read_if_changed(path, known)
        }
        let dir = std::env::temp_dir().join(format!("mlb-hung-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ok, hung) = (dir.join("ok.pem"), dir.join("hung.pem"));
        std::fs::write(&ok, pem_for(&["ok.test"])).unwrap();
        let mut manager = CertManager::new(&[], &[]);
        manager.reader = reader;
        manager.read_budget = std::time::Duration::from_millis(500);
        let manager = Arc::new(manager);
        assert!(
            manager
                .update_service_certs([(1002, Some(vec![ok.clone()]))])
                .is_empty()
        );
        let start = std::time::Instant::now();
        let applying = {
            let manager = manager.clone();
            std::thread::spawn(move || manager.update_service_certs([(1001, Some(vec![hung]))]))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let meanwhile = std::time::Instant::now();
        assert!(manager.port_config(1002).is_some());
        assert!(manager.same_certificate(Some(1002), "ok.test", "ok.test"));
        assert!(
            manager
                .update_port_options([(1002, Some(TlsOptions::default()))])
                .is_empty()
        );
        let again = manager.update_service_certs([(1003, Some(vec![ok.clone()]))]);
        assert!(
            meanwhile.elapsed() < std::time::Duration::from_millis(200),
            "{:?}",
            meanwhile.elapsed()
        );
        assert!(again[0].to_string().contains("still hangs"), "{again:?}");
        let errors = applying.join().unwrap();
        assert!(start.elapsed() < std::time::Duration::from_millis(1500));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = errors[0].to_string();
        // "Not read in time", or, when the other apply changed the labels meanwhile and this
        // one made its snapshot again, "still hangs".
        assert!(e.contains("hung.pem") && e.contains("not read"), "{e}");
        let snaps = manager.snapshots.load();
        assert!(snaps.ports[&1002].exact.contains_key("ok.test"));
        assert!(snaps.ports[&1003].exact.contains_key("ok.test"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
