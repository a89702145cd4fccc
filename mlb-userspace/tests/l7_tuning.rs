//! Per-service tuning through the proxy, set the way marathon-lb users set it: template labels
//! (`HAPROXY_{n}_BACKEND_HEAD`, `…_BACKEND_HTTP_OPTIONS`) and mlb's `MLB_{n}_*` labels, read by
//! the model and applied by a real proxy between real backends and clients on 127.0.0.1.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{collections::BTreeMap, time::Duration};

use l7_common::*;
use mlb::model::{HttpService, tuning_labels::port_tuning};

fn addr(proxy: &mlb::proxy::HttpProxy) -> std::net::SocketAddr {
    proxy.local_addr("http").unwrap()
}

/// `service` on `vhost`, tuned by `labels` as the model reads them for port 0.
fn tuned(app: &str, vhost: &str, backend: &TestBackend, labels: &[(&str, &str)]) -> HttpService {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut s = service(app, &[backend]);
    s.vhosts = vec![vhost.into()];
    s.tuning = port_tuning(&labels, 0).unwrap().0.into();
    s
}

/// The default (here shortened to 500 ms, standing for marathon-lb's 30 s) cuts a slow backend
/// with 504; the app whose BACKEND_HEAD says `timeout server` longer gets its answer.
#[tokio::test]
async fn a_backend_head_timeout_server_outlives_the_default() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |c| c.timeouts.server = Duration::from_millis(500));
    let plain = tuned("/plain", "plain.example", &a, &[]);
    let slow = tuned(
        "/slow",
        "slow.example",
        &a,
        &[(
            "HAPROXY_0_BACKEND_HEAD",
            "\nbackend {backend}\n  balance {balance}\n  mode {mode}\n  timeout server 5s\n",
        )],
    );
    apply(&proxy, vec![plain, slow]);
    let c = http_client();
    let got = get(&c, addr(&proxy), "plain.example", "/slow?ms=1500", &[]).await;
    assert_eq!(got.status, 504);
    let got = get(&c, addr(&proxy), "slow.example", "/slow?ms=1500", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.backend(), Some("a"));
}

#[tokio::test]
async fn header_edits_and_httpclose_from_labels_reach_backend_and_client() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let svc = tuned(
        "/h",
        "h.example",
        &a,
        &[
            (
                "HAPROXY_0_BACKEND_HTTP_OPTIONS",
                "  option httpclose\n  http-request set-header Host internal.example\n  http-request del-header Cookie\n  http-response set-header X-Frame-Options DENY\n",
            ),
            ("MLB_0_RESPONSE_HEADERS", "del-header x-seen-path"),
            ("MLB_0_FORWARDFOR", "false"),
        ],
    );
    apply(&proxy, vec![svc]);
    let c = http_client();
    let got = get(
        &c,
        addr(&proxy),
        "h.example",
        "/",
        &[("cookie", "session=1")],
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-seen-host"), Some("internal.example"));
    assert_eq!(got.header("x-seen-cookie"), None);
    assert_eq!(got.header("x-seen-xff"), None, "no option forwardfor");
    assert_eq!(got.header("x-frame-options"), Some("DENY"));
    assert_eq!(got.header("x-seen-path"), None);
    assert_eq!(got.header("connection"), Some("close"));
}
