//! Template overrides as marathon-lb users wrote them (from its issues and docs).
use std::time::Duration;

use super::*;

fn apply(label: &str, text: &str) -> (Tuning, Vec<DirectiveOutcome>) {
    let mut t = Tuning::default();
    let out = apply_template(label, text, &mut t);
    (t, out)
}

fn effects(out: &[DirectiveOutcome]) -> Vec<&Effect> {
    out.iter().map(|o| &o.effect).collect()
}

#[test]
fn backend_head_with_long_server_timeout() {
    let (t, out) = apply(
        "HAPROXY_0_BACKEND_HEAD",
        "\nbackend {backend}\n  balance {balance}\n  mode {mode}\n  timeout server 120s\n",
    );
    assert_eq!(t.timeouts.server, Some(Duration::from_secs(120)));
    assert_eq!(t.balance, None, "{{balance}} stays HAPROXY_0_BALANCE's");
    assert_eq!(
        effects(&out),
        [
            &Effect::Skeleton,
            &Effect::Skeleton,
            &Effect::Skeleton,
            &Effect::Applied
        ]
    );
}

#[test]
fn forwarded_port_header_in_backend_http_options() {
    let (t, out) = apply(
        "HAPROXY_0_BACKEND_HTTP_OPTIONS",
        "  option forwardfor\n  http-request set-header X-Forwarded-Port %[dst_port]\n  http-request add-header X-Forwarded-Proto https if { ssl_fc }\n",
    );
    assert_eq!(t.forwardfor, Some(true));
    assert_eq!(
        t.request_headers,
        [HeaderEdit::Set {
            name: "X-Forwarded-Port".into(),
            value: "%[dst_port]".into()
        }]
    );
    assert!(
        matches!(&out[2].effect, Effect::NotApplied(r) if r.contains("conditional")),
        "{}",
        out[2]
    );
}

#[test]
fn httpclose_turns_keep_alive_off_and_keep_alive_back_on() {
    let (t, _) = apply("HAPROXY_0_BACKEND_HTTP_OPTIONS", "  option httpclose\n");
    assert_eq!(t.keep_alive, Some(false));
    let (t, _) = apply(
        "HAPROXY_0_BACKEND_HTTP_OPTIONS",
        "  option http-keep-alive\n",
    );
    assert_eq!(t.keep_alive, Some(true));
    let (t, _) = apply("HAPROXY_0_BACKEND_HTTP_OPTIONS", "  no option forwardfor\n");
    assert_eq!(t.forwardfor, Some(false));
}

#[test]
fn ssl_verify_none_in_backend_server_options() {
    let (t, out) = apply(
        "HAPROXY_0_BACKEND_SERVER_OPTIONS",
        "  server {serverName} {host_ipv4}:{port}{cookieOptions}{healthCheckOptions}{otherOptions} ssl verify none\n",
    );
    assert_eq!(effects(&out), [&Effect::Applied]);
    let tls = t.backend_tls.unwrap();
    assert!(!tls.verify);
    assert_eq!(tls.ca_file, None);
}

#[test]
fn backend_tls_with_ca_and_sni() {
    let (t, _) = apply(
        "HAPROXY_1_BACKEND_SERVER_OPTIONS",
        "  server {serverName} {host_ipv4}:{port}{otherOptions} ssl ca-file /etc/ssl/internal-ca.pem sni str(api.internal)\n",
    );
    let tls = t.backend_tls.unwrap();
    assert!(tls.verify);
    assert_eq!(
        tls.ca_file.unwrap(),
        PathBuf::from("/etc/ssl/internal-ca.pem")
    );
    assert_eq!(tls.sni.as_deref(), Some("api.internal"));
}

#[test]
fn balance_source_and_unknown_algorithms() {
    let (t, _) = apply(
        "HAPROXY_0_BACKEND_HEAD",
        "backend {backend}\n  balance source\n",
    );
    assert_eq!(t.balance, Some(Balance::Source));
    let (t, out) = apply("HAPROXY_0_BACKEND_HEAD", "  balance uri\n");
    assert_eq!(t.balance, None);
    assert!(matches!(out[0].effect, Effect::NotApplied(_)));
}

#[test]
fn maxconn_means_frontend_or_server_by_section() {
    let (t, _) = apply(
        "HAPROXY_0_FRONTEND_HEAD",
        "\nfrontend {backend}\n  bind {bindAddr}:{servicePort}{sslCert}{bindOpts}\n  mode {mode}\n  maxconn 100\n",
    );
    assert_eq!(t.maxconn_frontend, Some(100));
    let (t, _) = apply(
        "HAPROXY_0_BACKEND_SERVER_OPTIONS",
        "  server {serverName} {host_ipv4}:{port}{otherOptions} maxconn 20\n",
    );
    assert_eq!(t.maxconn_server, Some(20));
}

#[test]
fn haproxy_head_defaults_set_global_timeouts_and_skip_process_settings() {
    let head = "global\n  daemon\n  maxconn 50000\n  log /dev/log local0\n  tune.ssl.default-dh-param 2048\ndefaults\n  load-server-state-from-file global\n  log global\n  retries 3\n  timeout connect 10s\n  timeout client 5m\n  timeout server 5m\n  timeout tunnel 1h\n  timeout http-keep-alive 1s\n  timeout http-request 15s\n  timeout queue 30s\n  option dontlognull\n  option redispatch\n";
    let (t, out) = apply("HAPROXY_HEAD", head);
    let to = &t.timeouts;
    assert_eq!(to.connect, Some(Duration::from_secs(10)));
    assert_eq!(to.client, Some(Duration::from_secs(300)));
    assert_eq!(to.server, Some(Duration::from_secs(300)));
    assert_eq!(to.tunnel, Some(Duration::from_secs(3600)));
    assert_eq!(to.http_keep_alive, Some(Duration::from_secs(1)));
    assert_eq!(to.http_request, Some(Duration::from_secs(15)));
    assert_eq!(t.maxconn_frontend, None, "global maxconn is process-wide");
    let not_applied: Vec<&str> = out
        .iter()
        .filter(|o| matches!(o.effect, Effect::NotApplied(_)))
        .map(|o| o.directive.as_str())
        .collect();
    assert_eq!(
        not_applied,
        [
            "daemon",
            "maxconn 50000",
            "log /dev/log local0",
            "tune.ssl.default-dh-param 2048",
            "load-server-state-from-file global",
            "log global",
            "timeout queue 30s",
            "option dontlognull"
        ]
    );
}

#[test]
fn check_timing_and_send_proxy_on_server_lines() {
    let (t, out) = apply(
        "HAPROXY_0_BACKEND_SERVER_OPTIONS",
        "  server {serverName} {host_ipv4}:{port}{cookieOptions}{healthCheckOptions}{otherOptions} check inter 2s fall 5 rise 2 send-proxy-v2\n",
    );
    assert_eq!(effects(&out), [&Effect::Applied]);
    assert_eq!(t.check.inter, Some(Duration::from_secs(2)));
    assert_eq!((t.check.fall, t.check.rise), (Some(5), Some(2)));
    assert_eq!(t.send_proxy, Some(ProxyProtocol::V2));
}

#[test]
fn response_headers_and_unsupported_fetches() {
    let (t, out) = apply(
        "HAPROXY_0_BACKEND_HTTP_OPTIONS",
        "  http-response set-header Strict-Transport-Security max-age=15768000\n  http-response del-header Server\n  http-request set-header X-Client-Cert %[ssl_c_der,base64]\n",
    );
    assert_eq!(
        t.response_headers,
        [
            HeaderEdit::Set {
                name: "Strict-Transport-Security".into(),
                value: "max-age=15768000".into()
            },
            HeaderEdit::Del {
                name: "Server".into()
            }
        ]
    );
    assert!(t.request_headers.is_empty());
    assert_eq!(
        out[2].to_string(),
        "HAPROXY_0_BACKEND_HTTP_OPTIONS: not applied: http-request set-header X-Client-Cert %[ssl_c_der,base64]: sample fetch %[ssl_c_der,base64] is not supported"
    );
}

#[test]
fn unknown_server_option_leaves_the_whole_line_unapplied() {
    let (t, out) = apply(
        "HAPROXY_0_BACKEND_SERVER_OPTIONS",
        "  server {serverName} {host_ipv4}:{port} ssl verify none cookie s1\n",
    );
    assert_eq!(t, Tuning::default());
    assert!(matches!(&out[0].effect, Effect::NotApplied(r) if r.contains("\"cookie\"")));
}

#[test]
fn frontend_acl_labels_are_routing_not_tuning() {
    let (t, out) = apply(
        "HAPROXY_0_HTTP_FRONTEND_ACL",
        "  acl host_{cleanedUpHostname} hdr(host) -i {hostname}\n  use_backend {backend} if host_{cleanedUpHostname}\n  timeout client 1m\n",
    );
    assert!(matches!(out[0].effect, Effect::NotApplied(_)));
    assert_eq!(out[1].effect, Effect::Skeleton);
    assert_eq!(t.timeouts.client, Some(Duration::from_secs(60)));
}

#[test]
fn json_escaped_newlines_and_global_default_options() {
    let (t, _) = apply(
        "HAPROXY_0_BACKEND_HEAD",
        "backend {backend}\\n  timeout server 90s\\n",
    );
    assert_eq!(t.timeouts.server, Some(Duration::from_secs(90)));
    let mut t = Tuning::default();
    let out = apply_default_options("redispatch,http-server-close,dontlognull,httpclose", &mut t);
    assert_eq!(t.keep_alive, Some(false));
    assert!(matches!(out[0].effect, Effect::Builtin(_)));
    assert!(matches!(out[2].effect, Effect::NotApplied(_)));
}

#[test]
fn legacy_reqadd_and_rspadd_add_headers_unless_conditional() {
    let (t, out) = apply(
        "HAPROXY_0_BACKEND_HTTP_OPTIONS",
        "  reqadd X-Forwarded-Proto:\\ https\n  rspadd X-Served-By:\\ mlb\\ edge\n  reqadd X-Forwarded-Proto:\\ https if { ssl_fc }\n",
    );
    assert_eq!(
        t.request_headers,
        [HeaderEdit::Add {
            name: "X-Forwarded-Proto".into(),
            value: "https".into()
        }]
    );
    assert_eq!(
        t.response_headers,
        [HeaderEdit::Add {
            name: "X-Served-By".into(),
            value: "mlb edge".into()
        }]
    );
    assert!(matches!(&out[2].effect, Effect::NotApplied(r) if r.contains("if/unless")));
}
