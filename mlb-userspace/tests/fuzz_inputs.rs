//! Randomised (seeded, bounded) inputs for what Marathon and clients hand mlb: the SSE parser,
//! app JSON, labels and the HTTP request path. Each property must hold for every input: no
//! panic, and the parsers' own invariants. `MLB_FUZZ_ITERS` runs longer; `MLB_FUZZ_SEED` replays
//! a failure (the seed is printed).
mod l7_common;

use std::{collections::BTreeMap, time::Duration};

use l7_common::*;
use mlb::{
    marathon::{sse::SseParser, types::parse_app_list_json},
    model::labels::{app_labels, port_labels},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn iterations(default: usize) -> usize {
    std::env::var("MLB_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rng(test: &str) -> StdRng {
    let seed = std::env::var("MLB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("{test}: MLB_FUZZ_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// `base` with a few random edits: bytes flipped, inserted from `alphabet`, removed, or cut.
fn mutate(rng: &mut StdRng, base: &[u8], alphabet: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let at = rng.random_range(0..=out.len());
        match rng.random_range(0..4) {
            0 if at < out.len() => out[at] = rng.random(),
            1 => out.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
            2 if at < out.len() => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
    }
    out
}

const SSE_ALPHABET: &[u8] = b"event:data:id:retry: \r\n\n:xyz{}\"0123456789\xEF\xBB\xBF";

/// Any byte stream, cut anywhere: the same events as fed whole, or the same error.
#[test]
fn sse_parser_is_chunking_invariant_and_never_panics() {
    let mut rng = rng("sse");
    let base = b"event: status_update_event\r\ndata: {\"appId\":\"/a\"}\r\n\r\n: keep-alive\n\nid: 7\ndata: a\ndata: b\n\nretry: 100\n\n";
    for _ in 0..iterations(3_000) {
        let input = mutate(&mut rng, base, SSE_ALPHABET);
        let whole = SseParser::new(256).feed(&input);
        let mut parser = SseParser::new(256);
        let mut events = Vec::new();
        let mut error = None;
        let mut rest = &input[..];
        while !rest.is_empty() && error.is_none() {
            let n = rng.random_range(1..=rest.len());
            match parser.feed(&rest[..n]) {
                Ok(e) => events.extend(e),
                Err(e) => error = Some(e),
            }
            rest = &rest[n..];
        }
        match (whole, error) {
            (Ok(all), None) => assert_eq!(all, events, "{:?}", String::from_utf8_lossy(&input)),
            (Err(a), Some(b)) => assert_eq!(a, b),
            (w, e) => panic!("{w:?} vs {e:?} for {:?}", String::from_utf8_lossy(&input)),
        }
    }
}

/// Broken `/v2/apps` bodies: an error or a list, never a panic; an app that parses has an id.
#[test]
fn app_list_json_never_panics() {
    let mut rng = rng("apps");
    let base = br#"{"apps":[{"id":"/a","instances":2,"labels":{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"a.com"},"portDefinitions":[{"port":10000,"protocol":"tcp"}],"tasks":[{"id":"a.1","host":"10.0.0.1","ports":[31000],"state":"TASK_RUNNING","healthCheckResults":[{"alive":true}]}],"container":{"docker":{"network":"BRIDGE","portMappings":[{"containerPort":80,"servicePort":10001}]}},"ipAddress":{"networkName":"x","discovery":{"ports":[{"number":80}]}}}]}"#;
    let alphabet = br#"{}[]",:0123456789-.etrufalsn /"#;
    for _ in 0..iterations(3_000) {
        let input = mutate(&mut rng, base, alphabet);
        if let Ok(list) = parse_app_list_json(&input) {
            assert!(list.apps.iter().all(|a| !a.id.is_empty()));
        }
    }
}

/// Random label values: parsed or refused with an error naming the label, never a panic.
#[test]
fn label_parsing_never_panics_and_names_the_label() {
    let mut rng = rng("labels");
    let keys = [
        "HAPROXY_GROUP",
        "HAPROXY_0_MODE",
        "HAPROXY_0_VHOST",
        "HAPROXY_0_PATH",
        "HAPROXY_0_PORT",
        "HAPROXY_0_AUTH",
        "HAPROXY_0_BIND_ADDR",
        "HAPROXY_0_BIND_OPTIONS",
        "HAPROXY_0_BALANCE",
        "HAPROXY_0_BACKEND_WEIGHT",
        "HAPROXY_0_SSL_CERT",
        "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL",
        "HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH",
        "HAPROXY_0_REDIRECT_TO_HTTPS",
        "HAPROXY_DEPLOYMENT_TARGET_INSTANCES",
        "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX",
    ];
    let seeds = [
        "http",
        "a.com,b.com",
        "/api",
        "10001",
        "r:u:$6$s$h",
        "198.18.0.1",
        "ssl-min-ver TLSv1.2 alpn h2",
        "leastconn",
        "-5",
        "/etc/ssl/x.pem",
        "10.0.0.0/8",
        "true",
        "3",
    ];
    let alphabet = b"abc/.:,$ -_0123456789*\xC3\xA9\t";
    for _ in 0..iterations(3_000) {
        let mut labels = BTreeMap::new();
        for _ in 0..rng.random_range(1..5) {
            let key = keys[rng.random_range(0..keys.len())];
            let seed = seeds[rng.random_range(0..seeds.len())].as_bytes();
            let value = String::from_utf8_lossy(&mutate(&mut rng, seed, alphabet)).into_owned();
            labels.insert(key.to_owned(), value);
        }
        if let (Err(e), _) = port_labels(&labels, 0) {
            assert!(labels.contains_key(&e.label), "{e}");
        }
        let _ = app_labels(&labels);
    }
}

/// Mangled request heads through the proxy: whatever they get (4xx, a close), the proxy keeps
/// serving a good request afterwards.
#[tokio::test]
async fn mangled_requests_never_break_the_proxy() {
    let mut rng = rng("http");
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["a.example.com".into()];
    apply(&proxy, vec![s]);
    let http = proxy.local_addr("http").unwrap();
    let base = b"POST /x?y=1 HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let alphabet = b"\r\n :;,/?#%0123456789abcdefHTP.\x00\x7f";
    for _ in 0..iterations(300) {
        let input = mutate(&mut rng, base, alphabet);
        let mut c = tokio::net::TcpStream::connect(http).await.unwrap();
        let _ = c.write_all(&input).await;
        let _ = c.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(300), c.read_to_end(&mut sink)).await;
    }
    let got = get(&http_client(), http, "a.example.com", "/", &[]).await;
    assert_eq!(got.status, 200);
}
