//! Marathon connection settings, built from the command line's Marathon flags
//! ([`MarathonConfig::from_flags`]).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use reqwest::Url;

use super::{MarathonError, auth::DcosCredentials};
use crate::secret::Secret;

/// How mlb authenticates to Marathon.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// No authentication.
    #[default]
    None,
    /// HTTP basic auth.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
    /// DC/OS service-account login; the token is sent as `Authorization: token=...`.
    Dcos(DcosCredentials),
}

/// How the Marathon server certificate is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TlsVerification {
    /// Against the system's root store (the default; marathon-lb did not verify by default).
    #[default]
    SystemRoots,
    /// Against the CA certificates in this PEM file only (`--marathon-ca-cert`).
    CaFile(PathBuf),
    /// Not at all (`--marathon-insecure`, explicit).
    Insecure,
}

/// Everything the Marathon client and watcher need.
#[derive(Clone, Debug)]
pub struct MarathonConfig {
    /// Marathon base URLs, in failover order, without credentials (a path prefix such as
    /// `/service/marathon` is kept).
    pub urls: Vec<Url>,
    /// Authentication.
    pub credentials: Credentials,
    /// Server certificate verification.
    pub tls: TlsVerification,
    /// TCP connect timeout for every request.
    pub connect_timeout: Duration,
    /// Whole-request timeout for REST calls (not for the event stream).
    pub request_timeout: Duration,
    /// Reconnect when the event stream delivers no byte (keep-alives included) for this long.
    pub stall_timeout: Duration,
    /// Cap of the jittered exponential reconnect backoff.
    pub max_backoff: Duration,
    /// Full resync period, on top of the resync after each (re)connect.
    pub resync_interval: Duration,
    /// Poll `/v2/apps` at this period instead of following the event stream.
    pub poll_interval: Option<Duration>,
    /// Coalescing: flush dirty apps once the stream has been quiet this long...
    pub coalesce_idle: Duration,
    /// ...or at the latest this long after the first dirty app.
    pub coalesce_max_delay: Duration,
    /// Coalescing: this many dirty apps in one window trigger one full resync instead of
    /// per-app re-reads.
    pub resync_threshold: usize,
    /// How many per-app re-reads run at once.
    pub reread_concurrency: usize,
}

impl Default for MarathonConfig {
    fn default() -> Self {
        MarathonConfig {
            urls: Vec::new(),
            credentials: Credentials::None,
            tls: TlsVerification::SystemRoots,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(300),
            max_backoff: Duration::from_secs(300),
            resync_interval: Duration::from_secs(300),
            poll_interval: None,
            coalesce_idle: Duration::from_millis(2),
            coalesce_max_delay: Duration::from_millis(50),
            resync_threshold: 50,
            // A burst of 1,000 task kills re-reads ~600 apps in one batch: at 8 at once that
            // took 450 ms of round trips; 32 keeps Marathon's request load modest (one
            // connection each) while the round trips overlap.
            reread_concurrency: 32,
        }
    }
}

/// `mlb run`'s Marathon flags as given, for [`MarathonConfig::from_flags`] (names as the flags).
#[derive(Clone, Copy, Debug)]
pub struct MarathonFlags<'a> {
    pub marathon: &'a [String],
    pub auth_credentials: Option<&'a Secret>,
    pub marathon_auth_credential_file: Option<&'a Path>,
    pub dcos_auth_credentials: Option<&'a Secret>,
    pub marathon_ca_cert: Option<&'a Path>,
    pub marathon_insecure: bool,
    pub sse_stall_timeout: u64,
    pub max_backoff: u64,
    pub resync_interval: u64,
    pub poll_interval: Option<u64>,
}

/// The environment variable marathon-lb reads DC/OS service-account JSON from.
pub const DCOS_CREDENTIAL_ENV: &str = "DCOS_SERVICE_ACCOUNT_CREDENTIAL";

impl MarathonConfig {
    /// Builds the configuration from `mlb run`'s Marathon flags, reading the credential file
    /// and `DCOS_SERVICE_ACCOUNT_CREDENTIAL` (marathon-lb's fallback for
    /// `--dcos-auth-credentials`).
    pub fn from_flags(flags: &MarathonFlags<'_>) -> Result<Self, MarathonError> {
        let dcos_env = std::env::var(DCOS_CREDENTIAL_ENV).ok().map(Secret::new);
        Self::from_flags_with_env(flags, dcos_env)
    }

    /// [`Self::from_flags`] with the environment fallback passed in (for tests).
    pub fn from_flags_with_env(
        opts: &MarathonFlags<'_>,
        dcos_env: Option<Secret>,
    ) -> Result<Self, MarathonError> {
        let mut urls = Vec::new();
        let mut url_credentials = None;
        for raw in opts.marathon {
            let (url, creds) = parse_marathon_url(raw)?;
            if url_credentials.is_none() {
                url_credentials = creds;
            }
            urls.push(url);
        }
        if urls.is_empty() {
            return Err(MarathonError::Config("no --marathon URL given".into()));
        }

        // marathon-lb's precedence: credential file, then --auth-credentials, then DC/OS.
        // Credentials embedded in a --marathon URL come last.
        let credentials = if let Some(path) = opts.marathon_auth_credential_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                MarathonError::Config(format!(
                    "--marathon-auth-credential-file {}: {e}",
                    path.display()
                ))
            })?;
            let first = text.lines().next().unwrap_or("");
            parse_basic(
                first,
                &format!("--marathon-auth-credential-file {}", path.display()),
            )?
        } else if let Some(s) = opts.auth_credentials {
            parse_basic(s.expose(), "--auth-credentials")?
        } else if let Some(s) = opts.dcos_auth_credentials.or(dcos_env.as_ref()) {
            Credentials::Dcos(DcosCredentials::parse(s.expose())?)
        } else if let Some(c) = url_credentials {
            c
        } else {
            Credentials::None
        };

        let tls = match (opts.marathon_ca_cert, opts.marathon_insecure) {
            (Some(_), true) => {
                return Err(MarathonError::Config(
                    "--marathon-ca-cert and --marathon-insecure contradict each other".into(),
                ));
            }
            (Some(path), false) => TlsVerification::CaFile(path.to_path_buf()),
            (None, true) => TlsVerification::Insecure,
            (None, false) => TlsVerification::SystemRoots,
        };

        let secs = |flag: &str, v: u64| {
            if v == 0 {
                Err(MarathonError::Config(format!(
                    "{flag} must be at least 1 second"
                )))
            } else {
                Ok(Duration::from_secs(v))
            }
        };
        Ok(MarathonConfig {
            urls,
            credentials,
            tls,
            stall_timeout: secs("--sse-stall-timeout", opts.sse_stall_timeout)?,
            max_backoff: secs("--max-backoff", opts.max_backoff)?,
            resync_interval: secs("--resync-interval", opts.resync_interval)?,
            poll_interval: opts
                .poll_interval
                .map(|v| secs("--poll-interval", v))
                .transpose()?,
            ..MarathonConfig::default()
        })
    }
}

/// Parses a `--marathon` URL. Credentials in it (`http://user:pass@host`) are taken out so
/// that URLs can be logged.
fn parse_marathon_url(raw: &str) -> Result<(Url, Option<Credentials>), MarathonError> {
    let mut url = Url::parse(raw.trim())
        .map_err(|e| MarathonError::Config(format!("--marathon {}: {e}", redact_userinfo(raw))))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(MarathonError::Config(format!(
            "--marathon {}: expected an http:// or https:// URL with a host",
            redact_userinfo(raw)
        )));
    }
    let creds = if url.username().is_empty() {
        None
    } else {
        Some(Credentials::Basic {
            user: url.username().to_owned(),
            password: Secret::new(url.password().unwrap_or("")),
        })
    };
    // Infallible for http(s) URLs with a host.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    Ok((url, creds))
}

fn redact_userinfo(raw: &str) -> String {
    match (raw.find("://"), raw.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}<redacted>{}", &raw[..s + 3], &raw[at..]),
        _ => raw.to_owned(),
    }
}

/// `user:pass`. Unlike marathon-lb, the password may itself contain `:` (split at the first).
fn parse_basic(s: &str, source: &str) -> Result<Credentials, MarathonError> {
    match s.trim_end_matches(['\r', '\n']).split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok(Credentials::Basic {
            user: user.to_owned(),
            password: Secret::new(password),
        }),
        _ => Err(MarathonError::Config(format!(
            "{source}: expected user:password"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::options::{Cli, Command, RunOptions};

    fn run_opts(args: &[&str]) -> Box<RunOptions> {
        let mut argv = vec!["mlb", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Run(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_and_flags() {
        let c = MarathonConfig::from_flags_with_env(
            &run_opts(&["-m", "http://m1:8080", "-m", "https://m2/service/marathon/"])
                .marathon_flags(),
            None,
        )
        .unwrap();
        assert_eq!(c.urls[0].as_str(), "http://m1:8080/");
        assert_eq!(c.urls[1].as_str(), "https://m2/service/marathon/");
        assert!(matches!(c.credentials, Credentials::None));
        assert_eq!(c.tls, TlsVerification::SystemRoots);
        assert_eq!(c.stall_timeout, Duration::from_secs(300));
        assert_eq!(c.resync_interval, Duration::from_secs(300));
        assert_eq!(c.poll_interval, None);

        let c = MarathonConfig::from_flags_with_env(
            &run_opts(&[
                "-m",
                "http://m1",
                "--auth-credentials",
                "alice:pa:ss",
                "--marathon-insecure",
                "--sse-stall-timeout",
                "20",
                "--max-backoff",
                "7",
                "--resync-interval",
                "60",
                "--poll-interval",
                "5",
            ])
            .marathon_flags(),
            None,
        )
        .unwrap();
        match &c.credentials {
            Credentials::Basic { user, password } => {
                assert_eq!(user, "alice");
                assert_eq!(password.expose(), "pa:ss");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.tls, TlsVerification::Insecure);
        assert_eq!(c.stall_timeout, Duration::from_secs(20));
        assert_eq!(c.max_backoff, Duration::from_secs(7));
        assert_eq!(c.resync_interval, Duration::from_secs(60));
        assert_eq!(c.poll_interval, Some(Duration::from_secs(5)));
    }

    #[test]
    fn credential_file_wins_and_url_credentials_are_stripped() {
        let dir = std::env::temp_dir().join(format!("mlb-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cred");
        std::fs::write(&file, "bob:filepass\nignored\n").unwrap();
        let c = MarathonConfig::from_flags_with_env(
            &run_opts(&[
                "-m",
                "http://u:urlpass@m1:8080/?x=1",
                "--auth-credentials",
                "alice:flagpass",
                "--marathon-auth-credential-file",
                file.to_str().unwrap(),
            ])
            .marathon_flags(),
            None,
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.urls[0].as_str(), "http://m1:8080/");
        match &c.credentials {
            Credentials::Basic { user, password } => {
                assert_eq!((user.as_str(), password.expose()), ("bob", "filepass"));
            }
            other => panic!("{other:?}"),
        }
        // With nothing else, the URL's credentials are used.
        let c = MarathonConfig::from_flags_with_env(
            &run_opts(&["-m", "http://u:urlpass@m1:8080"]).marathon_flags(),
            None,
        )
        .unwrap();
        assert!(
            matches!(&c.credentials, Credentials::Basic { user, password } if user == "u" && password.expose() == "urlpass")
        );
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let err = |args: &[&str]| {
            MarathonConfig::from_flags_with_env(&run_opts(args).marathon_flags(), None)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[]).contains("no --marathon"));
        let e = err(&["-m", "ftp://u:secretpw@x"]);
        assert!(e.contains("http://") && !e.contains("secretpw"), "{e}");
        let e = err(&["-m", "http://x", "--auth-credentials", "nocolon"]);
        assert!(
            e.contains("--auth-credentials") && e.contains("user:password"),
            "{e}"
        );
        let e = err(&[
            "-m",
            "http://x",
            "--marathon-ca-cert",
            "/ca.pem",
            "--marathon-insecure",
        ]);
        assert!(e.contains("contradict"), "{e}");
        let e = err(&["-m", "http://x", "--max-backoff", "0"]);
        assert!(e.contains("--max-backoff"), "{e}");
    }

    #[test]
    fn secrets_are_redacted_from_debug_output() {
        let opts = run_opts(&[
            "-m",
            "http://m1",
            "--auth-credentials",
            "alice:hunter2-password",
            "--dcos-auth-credentials",
            "{\"uid\":\"svc\",\"private_key\":\"KEYMATERIAL\",\"login_endpoint\":\"http://x\"}",
        ]);
        let dbg = format!("{opts:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("KEYMATERIAL"),
            "{dbg}"
        );

        let c = MarathonConfig::from_flags_with_env(&opts.marathon_flags(), None).unwrap();
        let dbg = format!("{c:?} {:#?}", c.credentials);
        assert!(dbg.contains("alice"), "the user name is not secret: {dbg}");
        assert!(!dbg.contains("hunter2"), "{dbg}");

        let dcos = Credentials::Dcos(
            DcosCredentials::parse(
                "{\"uid\":\"svc\",\"private_key\":\"KEYMATERIAL\",\"login_endpoint\":\"http://x\"}",
            )
            .unwrap(),
        );
        let dbg = format!("{dcos:?}");
        assert!(dbg.contains("svc") && !dbg.contains("KEYMATERIAL"), "{dbg}");
    }
}
