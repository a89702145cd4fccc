use std::{collections::HashMap, os::unix::fs::PermissionsExt as _};

use clap::Parser as _;

use super::*;
use crate::options::{Cli, Command};

/// The DC/OS package's arguments (marathon-lb 1.15 universe package).
const STOCK: &[&str] = &[
    "sse",
    "-m",
    "http://marathon.mesos:8080",
    "--health-check",
    "--haproxy-map",
    "--max-reload-retries",
    "10",
    "--reload-interval",
    "10",
    "--group",
    "external",
];

fn parse(args: &[&str]) -> Cli {
    let argv = std::iter::once("mlb").chain(args.iter().copied());
    let argv = normalize_args(argv.map(OsString::from).collect());
    Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn run_options(cmd: Command) -> Box<RunOptions> {
    match cmd {
        Command::Run(o) | Command::Sse(o) | Command::Poll(o) => o,
        other => panic!("not a run command: {other:?}"),
    }
}

#[test]
fn compat_stock_package_line_parses_with_one_notice() {
    let cmd = parse(STOCK).command;
    assert!(matches!(cmd, Command::Sse(_)));
    let o = run_options(cmd);
    assert_eq!(o.marathon, ["http://marathon.mesos:8080"]);
    assert!(o.health_check);
    assert_eq!(o.group, ["external"]);
    let notice = haproxy_only_notice(&o).unwrap();
    for flag in ["--haproxy-map", "--max-reload-retries", "--reload-interval"] {
        assert!(notice.contains(flag), "{notice}");
    }
    assert!(
        !notice.contains("--group") && !notice.contains("--health-check"),
        "{notice}"
    );
    assert!(notice.contains("no HAProxy"), "{notice}");
}

#[test]
fn compat_every_marathon_lb_flag_is_accepted() {
    let cli = parse(&[
        "poll",
        "--longhelp",
        "-m",
        "http://a:8080",
        "http://b:8080",
        "--marathon",
        "http://c:8080",
        "--haproxy-config",
        "/etc/haproxy/haproxy.cfg",
        "--group",
        "external",
        "--group",
        "*",
        "-c",
        "sv reload haproxy",
        "--max-reload-retries",
        "-1",
        "--reload-interval",
        "5",
        "--strict-mode",
        "-s",
        "--archive-versions",
        "5",
        "-H",
        "--lru-cache-capacity",
        "50",
        "--haproxy-map",
        "--dont-bind-http-https",
        "--group-https-by-vhost",
        "--ssl-certs",
        "/a.pem,/b.pem",
        "--skip-validation",
        "--skip-config-cleanup",
        "-d",
        "--min-serv-port-ip-per-task",
        "10050",
        "--max-serv-port-ip-per-task",
        "10100",
        "--max-backoff",
        "30",
        "--syslog-socket",
        "/dev/null",
        "--log-format",
        "%(asctime)-15s %(name)s: %(message)s",
        "--log-level",
        "DEBUG",
        "--marathon-auth-credential-file",
        "/creds",
        "--auth-credentials",
        "u:p",
        "--dcos-auth-credentials",
        "{}",
        "--marathon-ca-cert",
        "/ca.pem",
    ]);
    assert_eq!(cli.log_level, Some(tracing::Level::DEBUG));
    assert!(cli.log_format.python.is_some());
    let o = run_options(cli.command);
    assert_eq!(o.marathon.len(), 3, "-m a b and a repeated --marathon");
    assert_eq!(o.group, ["external", "*"]);
    assert_eq!(o.ssl_certs.len(), 2);
    assert_eq!(o.haproxy_only.max_reload_retries, Some(-1));
    assert_eq!(o.haproxy_only.given().len(), 9);
    assert_eq!(o.model_options(None).unwrap().health_cache_capacity, 50);
    assert!(o.sse && o.health_check && o.strict_mode && o.longhelp);
}

#[test]
fn compat_script_form_becomes_sse_or_poll() {
    let cmd = parse(&[
        "--marathon",
        "http://m:8080",
        "--group",
        "external",
        "--sse",
    ])
    .command;
    assert!(matches!(cmd, Command::Sse(_)));
    let cmd = parse(&["-m", "http://m:8080", "--group", "external"]).command;
    assert!(matches!(cmd, Command::Poll(_)));
    // mlb's own forms are left alone.
    let cmd = parse(&["--log-format", "json", "run", "-m", "http://m:8080"]).command;
    assert!(matches!(cmd, Command::Run(_)));
    let args: Vec<OsString> = ["mlb", "--help"].map(OsString::from).to_vec();
    assert_eq!(normalize_args(args.clone()), args);
}

#[test]
fn compat_bad_log_values_are_refused_with_the_accepted_ones() {
    let err = Cli::try_parse_from(["mlb", "--log-level", "LOUD", "version"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("Invalid log level: LOUD"), "{err}");
    let err = Cli::try_parse_from(["mlb", "--log-format", "xml", "version"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected text, json"), "{err}");
    let cli = Cli::try_parse_from(["mlb", "--log-level", "warning", "version"]).unwrap();
    assert_eq!(cli.log_level, Some(tracing::Level::WARN));
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

fn temp_parent(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlb-compat-{tag}-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn compat_wrapper_env_certs_credentials_and_poll_interval() {
    let cmd = parse(&["poll", "-m", "http://m:8080", "--ssl-certs", "/flag.pem"]).command;
    let mut o = run_options(cmd);
    let parent = temp_parent("env");
    let env = env_of(&[
        ("HAPROXY_SSL_CERT", "PEM-A"),
        ("HAPROXY_SSL_CERT0", ""),
        ("HAPROXY_SSL_CERT7", "PEM-B"),
        ("MARATHON_USER", "lb"),
        ("MARATHON_PASSWORD", "s:cret"),
        ("POLL_INTERVAL", "15"),
    ]);
    let out = apply_wrapper_env(&mut o, Mode::Poll, &env, &parent).unwrap();
    let dir = out.cert_dir.as_ref().unwrap().path().to_owned();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let names: Vec<String> = o
        .ssl_certs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["HAPROXY_SSL_CERT.pem", "HAPROXY_SSL_CERT7.pem", "flag.pem"],
        "empty variables skipped, environment before --ssl-certs"
    );
    assert_eq!(fs::read_to_string(&o.ssl_certs[1]).unwrap(), "PEM-B");
    let mode = fs::metadata(&o.ssl_certs[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(o.auth_credentials.as_ref().unwrap().expose(), "lb:s:cret");
    assert_eq!(o.poll_interval, Some(15));
    assert!(out.notices[0].contains("HAPROXY_SSL_CERT, HAPROXY_SSL_CERT7"));
    drop(out);
    assert!(!dir.exists(), "certificate directory removed on drop");
    let _ = fs::remove_dir_all(parent);
}

#[test]
fn compat_flags_win_over_the_environment() {
    let cmd = parse(&["poll", "--auth-credentials", "a:b", "--sse"]).command;
    let mut o = run_options(cmd);
    let env = env_of(&[
        ("MARATHON_USER", "lb"),
        ("MARATHON_PASSWORD", "x"),
        ("POLL_INTERVAL", "15"),
    ]);
    let out = apply_wrapper_env(&mut o, Mode::Poll, &env, Path::new("/nonexistent")).unwrap();
    assert!(out.cert_dir.is_none() && out.notices.is_empty());
    assert_eq!(o.auth_credentials.unwrap().expose(), "a:b");
    assert_eq!(o.poll_interval, None, "--sse wins over POLL_INTERVAL");

    let cmd = parse(&["poll"]).command;
    let mut o = run_options(cmd);
    apply_wrapper_env(&mut o, Mode::Poll, &env_of(&[]), Path::new("/x")).unwrap();
    assert_eq!(o.poll_interval, Some(60), "the image's default");
    let err = apply_wrapper_env(
        &mut run_options(parse(&["poll"]).command),
        Mode::Poll,
        &env_of(&[("POLL_INTERVAL", "soon")]),
        Path::new("/x"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("POLL_INTERVAL=\"soon\""), "{err}");
}

#[test]
fn compat_sysctl_and_default_options_are_reported() {
    let read = |k: &str| match k {
        "net.core.somaxconn" => Some("10000\n".to_owned()),
        "net.ipv4.tcp_fin_timeout" => Some("60\n".to_owned()),
        _ => None,
    };
    let n = sysctl_notice(
        "net.core.somaxconn=10000 net.ipv4.tcp_fin_timeout=30 net.bogus=1",
        &read,
    );
    assert!(n.contains("not applied"), "{n}");
    assert!(
        n.contains("Already as requested: net.core.somaxconn;"),
        "{n}"
    );
    assert!(
        n.contains("net.ipv4.tcp_fin_timeout is 60 (wants 30)"),
        "{n}"
    );
    assert!(n.contains("net.bogus unknown"), "{n}");

    let n =
        default_options_notice("redispatch, http-server-close,dontlognull,redispatch,abortonclose");
    assert_eq!(n.matches("redispatch").count(), 1, "{n}");
    assert!(
        n.starts_with("HAPROXY_GLOBAL_DEFAULT_OPTIONS: abortonclose: not applicable"),
        "{n}"
    );
    assert!(n.contains("http-server-close: not applied"), "{n}");
}

#[test]
fn compat_syslog_socket_from_the_image_environment() {
    let env = env_of(&[("SYSLOG_SOCKET", "/dev/null")]);
    assert_eq!(
        syslog_socket_from_env(None, &env),
        Some(PathBuf::from("/dev/null"))
    );
    assert_eq!(
        syslog_socket_from_env(Some("/dev/log".into()), &env),
        Some(PathBuf::from("/dev/log"))
    );
}
