//! marathon-lb compatibility: its two command-line forms, its HAProxy-only flags, and the
//! environment its Docker image's `run` wrapper read (`run sse|poll [marathon_lb.py args]`).
//!
//! Everything here turns marathon-lb's inputs into [`RunOptions`] plus start-up notices; the
//! binary logs the notices once logging is set up. Nothing is silently ignored: every input
//! either keeps its meaning or is named in a notice saying why it has none.
use std::{
    ffi::OsString,
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::{options::RunOptions, secret::Secret};

/// `HAPROXY_SSL_CERT0` .. this, as the wrapper reads them.
const MAX_CERT_INDEX: u32 = 100;
/// marathon-lb image's poll period without `POLL_INTERVAL`.
const DEFAULT_POLL_INTERVAL: u64 = 60;

/// How marathon-lb was started: its image's first argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `sse`: follow the event stream.
    Sse,
    /// `poll`: re-read Marathon every `POLL_INTERVAL` seconds.
    Poll,
}

/// A wrong wrapper environment variable.
#[derive(Debug, Error)]
pub enum CompatError {
    #[error("{var}={value:?}: expected a number of seconds")]
    BadNumber { var: &'static str, value: String },
    #[error("writing the certificate from {var} to {path}: {source}")]
    WriteCert {
        var: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// marathon_lb.py's own form, `mlb --marathon URL --group G [--sse]` (no subcommand), becomes
/// `mlb sse ...` with `--sse` and `mlb poll ...` without (mlb re-reads Marathon where the
/// script read it once and exited). Other command lines are returned unchanged.
pub fn normalize_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else {
        return args;
    };
    let clap_own = ["-h", "--help", "-V", "--version"];
    if !first.starts_with('-') || clap_own.contains(&first) {
        return args;
    }
    let subcommands = ["run", "sse", "poll", "explain", "version", "help"];
    if args[1..]
        .iter()
        .any(|a| a.to_str().is_some_and(|a| subcommands.contains(&a)))
    {
        return args;
    }
    let sse = args[1..].iter().any(|a| a == "--sse" || a == "-s");
    args.insert(1, if sse { "sse" } else { "poll" }.into());
    args
}

/// The one start-up line for marathon-lb's HAProxy-only flags, when any was given.
pub fn haproxy_only_notice(opts: &RunOptions) -> Option<String> {
    let given = opts.haproxy_only.given();
    (!given.is_empty()).then(|| {
        format!(
            "marathon-lb flags without effect in mlb: {}: they steer HAProxy's config file, \
             reloads and validation, and mlb has no HAProxy (routes change in place, nothing \
             is reloaded)",
            given.join(" ")
        )
    })
}

/// The notice for a Python `--log-format`.
pub fn log_format_notice(python: &str) -> String {
    format!(
        "--log-format {python:?} is a Python logging format (marathon-lb's): mlb logs its own \
         text format; use --log-format json for structured logs"
    )
}

/// `--syslog-socket` from the wrapper's `SYSLOG_SOCKET` when the flag was not given.
pub fn syslog_socket_from_env(
    flag: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<PathBuf> {
    flag.or_else(|| {
        env("SYSLOG_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
}

/// A private directory (mode 0700) for certificates from the environment, removed on drop.
#[derive(Debug)]
pub struct CertDir {
    path: PathBuf,
}

impl CertDir {
    /// Creates `parent/mlb-certs-<pid>`.
    pub fn create(parent: &Path) -> std::io::Result<CertDir> {
        let path = parent.join(format!("mlb-certs-{}", std::process::id()));
        // A directory left by a killed mlb with the same PID: start clean.
        let _ = fs::remove_dir_all(&path);
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(CertDir { path })
    }

    /// Where the certificates are written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, var: &str, pem: &str) -> Result<PathBuf, CompatError> {
        let path = self.path.join(format!("{var}.pem"));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(pem.as_bytes()));
        written.map_err(|source| CompatError::WriteCert {
            var: var.to_owned(),
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// What the wrapper environment did: notices to log, and the certificate directory to keep
/// until exit.
#[derive(Debug, Default)]
pub struct WrapperEnv {
    pub notices: Vec<String>,
    pub cert_dir: Option<CertDir>,
}

/// Applies the marathon-lb image's environment to `opts`, as its `run` wrapper did: PEM
/// certificates from `HAPROXY_SSL_CERT` and `HAPROXY_SSL_CERT0..100` (written under
/// `cert_parent` and served before `--ssl-certs`), `MARATHON_USER`/`MARATHON_PASSWORD` as
/// basic auth, `POLL_INTERVAL` in poll mode; `HAPROXY_SYSCTL_PARAMS`,
/// `HAPROXY_GLOBAL_DEFAULT_OPTIONS` and the rest are reported, not applied. Flags win over the
/// environment, as they won over the wrapper's.
pub fn apply_wrapper_env(
    opts: &mut RunOptions,
    mode: Mode,
    env: &dyn Fn(&str) -> Option<String>,
    cert_parent: &Path,
) -> Result<WrapperEnv, CompatError> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let mut out = WrapperEnv::default();
    let certs = cert_vars(&env);
    if !certs.is_empty() {
        let dir = CertDir::create(cert_parent).map_err(|source| CompatError::WriteCert {
            var: certs[0].0.clone(),
            path: cert_parent.to_owned(),
            source,
        })?;
        let mut paths = Vec::new();
        for (var, pem) in &certs {
            paths.push(dir.write(var, pem)?);
        }
        paths.append(&mut opts.ssl_certs);
        opts.ssl_certs = paths;
        let names: Vec<&str> = certs.iter().map(|(v, _)| v.as_str()).collect();
        out.notices.push(format!(
            "certificates from {} served on the HTTPS frontend (written to {})",
            names.join(", "),
            dir.path().display()
        ));
        out.cert_dir = Some(dir);
    }
    if let (Some(user), Some(password)) = (env("MARATHON_USER"), env("MARATHON_PASSWORD"))
        && opts.auth_credentials.is_none()
    {
        opts.auth_credentials = Some(Secret::new(format!("{user}:{password}")));
    }
    if mode == Mode::Poll && !opts.sse && opts.poll_interval.is_none() {
        opts.poll_interval = Some(match env("POLL_INTERVAL") {
            Some(v) => v.trim().parse().map_err(|_| CompatError::BadNumber {
                var: "POLL_INTERVAL",
                value: v.clone(),
            })?,
            None => DEFAULT_POLL_INTERVAL,
        });
    }
    if let Some(params) = env("HAPROXY_SYSCTL_PARAMS") {
        out.notices.push(sysctl_notice(&params, &read_sysctl));
    }
    if let Some(options) = env("HAPROXY_GLOBAL_DEFAULT_OPTIONS") {
        out.notices.push(default_options_notice(&options));
    }
    out.notices.extend(unsupported_notice(&env));
    Ok(out)
}

/// `(variable, PEM)` for every certificate variable set, in the wrapper's order.
fn cert_vars(env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let names = std::iter::once("HAPROXY_SSL_CERT".to_owned())
        .chain((0..=MAX_CERT_INDEX).map(|i| format!("HAPROXY_SSL_CERT{i}")));
    names
        .filter_map(|var| env(&var).map(|pem| (var, pem)))
        .collect()
}

/// mlb does not write kernel settings: with host networking they are the host's, and a
/// container needs `--privileged` to write them. The notice says which already hold.
fn sysctl_notice(params: &str, read: &dyn Fn(&str) -> Option<String>) -> String {
    let (mut holding, mut differing) = (Vec::new(), Vec::new());
    for param in params.split_whitespace() {
        let Some((key, want)) = param.split_once('=') else {
            differing.push(format!("{param} (not key=value)"));
            continue;
        };
        match read(key) {
            Some(now) if now.split_whitespace().eq(want.split_whitespace()) => {
                holding.push(key.to_owned());
            }
            Some(now) => differing.push(format!("{key} is {} (wants {want})", now.trim())),
            None => differing.push(format!("{key} unknown to this kernel (wants {want})")),
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    format!(
        "HAPROXY_SYSCTL_PARAMS not applied: mlb does not change kernel settings (host-wide with \
         host networking; a container would need --privileged); set them on the agent (sysctl.d). \
         Already as requested: {}; different: {}",
        list(&holding),
        list(&differing)
    )
}

fn read_sysctl(key: &str) -> Option<String> {
    fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/"))).ok()
}

/// What mlb does for each HAProxy `option` of `HAPROXY_GLOBAL_DEFAULT_OPTIONS`.
fn default_option_effect(option: &str) -> &'static str {
    match option {
        "redispatch" => {
            "built in (a request whose backend connection fails is retried on another backend)"
        }
        "http-server-close" => "not applied (mlb keeps backend connections alive and reuses them)",
        "dontlognull" => "built in (mlb logs no per-connection lines)",
        "forwardfor" => "built in (X-Forwarded-For is always added)",
        "httplog" | "tcplog" => "not applied (mlb has no per-request log)",
        _ => "not applicable (an HAProxy option with no mlb equivalent)",
    }
}

fn default_options_notice(options: &str) -> String {
    let mut opts: Vec<&str> = options
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    opts.sort_unstable();
    opts.dedup();
    let effects: Vec<String> = opts
        .iter()
        .map(|o| format!("{o}: {}", default_option_effect(o)))
        .collect();
    format!("HAPROXY_GLOBAL_DEFAULT_OPTIONS: {}", effects.join("; "))
}

/// The wrapper's variables that mean nothing to mlb, when set.
fn unsupported_notice(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    const WHY: [(&str, &str); 2] = [
        (
            "HAPROXY_SYSLOGD",
            "HAProxy connection logs; mlb's own logs go to --syslog-socket",
        ),
        (
            "VAULT_TOKEN",
            "Vault lookup of Marathon credentials; give MARATHON_USER/MARATHON_PASSWORD or \
             --marathon-auth-credential-file",
        ),
    ];
    let mut set: Vec<String> = WHY
        .iter()
        .filter(|(var, _)| env(var).is_some())
        .map(|(var, why)| format!("{var} ({why})"))
        .collect();
    let templates = env("MESOS_SANDBOX").map(|s| Path::new(&s).join("templates"));
    if let Some(dir) = templates.filter(|d| d.is_dir()) {
        set.push(format!(
            "{} (HAProxy template files; mlb reads no HAProxy templates)",
            dir.display()
        ));
    }
    (!set.is_empty()).then(|| {
        format!(
            "marathon-lb image variables without effect: {}",
            set.join("; ")
        )
    })
}

#[cfg(test)]
mod tests;
