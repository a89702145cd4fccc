//! Fuzz targets for what Marathon and clients hand mlb: the SSE parser, `/v2/apps` bodies through
//! the model, labels, and the HTTP request path through the proxy.
//!
//! Each target is a [bolero] harness. Under `cargo test` it runs a bounded number of generated
//! inputs, then every file in `tests/__fuzz__/<target>/{corpus,crashes}`: a crash found by a
//! campaign is kept there and replayed by every test run from then on. `cargo xtask fuzz` runs
//! the same targets coverage-guided under libFuzzer. `BOLERO_RANDOM_ITERATIONS=N` runs longer
//! here; a failure prints `BOLERO_RANDOM_SEED=…` to replay it.
//!
//! Inputs are edits of valid seeds (bytes set, tokens of the format inserted, ranges removed,
//! repeated or cut), so most of them get past the first byte of the parser; the generator turns
//! libFuzzer's bytes into edits the same way, so coverage guidance steers the edits.
#![expect(
    clippy::unwrap_used,
    reason = "the lab and the exchange outside #[test] functions fail the target loudly"
)]

mod l7_common;

use std::{
    collections::BTreeMap,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use bolero::{TypeGenerator, check};
use l7_common::*;
use mlb::{
    marathon::{sse::SseParser, types::parse_app_list_json},
    model::{
        BasicAuth, HealthCache, ModelOptions, desired_state,
        explain::{consistent_with, explain},
        labels::{app_labels, port_labels},
    },
    proxy::HttpProxy,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One edit of a seed. Positions wrap around the current length; `token` indexes the target's
/// list of fragments meaningful to its format.
#[derive(Debug, TypeGenerator)]
enum Edit {
    SetByte { at: u16, byte: u8 },
    Insert { at: u16, token: u8 },
    Remove { at: u16, len: u8 },
    Repeat { at: u16, len: u8, times: u8 },
    Cut { at: u16 },
}

/// A seed (index into the target's seeds) and the edits made to it.
#[derive(Debug, TypeGenerator)]
struct Mutation {
    seed: u8,
    edits: Vec<Edit>,
}

impl Mutation {
    fn apply(&self, seeds: &[&[u8]], tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = seeds[usize::from(self.seed) % seeds.len()].to_vec();
        for edit in &self.edits {
            let at = |at: u16| usize::from(at) % (out.len() + 1);
            match *edit {
                Edit::SetByte { at: a, byte } if !out.is_empty() => {
                    let i = usize::from(a) % out.len();
                    out[i] = byte;
                }
                Edit::SetByte { .. } => {}
                Edit::Insert { at: a, token } => {
                    let i = at(a);
                    let t = tokens[usize::from(token) % tokens.len()];
                    out.splice(i..i, t.iter().copied());
                }
                Edit::Remove { at: a, len } => {
                    let i = at(a);
                    let end = (i + usize::from(len)).min(out.len());
                    out.drain(i..end);
                }
                Edit::Repeat { at: a, len, times } => {
                    let i = at(a);
                    let end = (i + usize::from(len)).min(out.len());
                    let piece = out[i..end].to_vec();
                    // Bounded: a few KiB at most per edit, whatever the input.
                    for _ in 0..times % 16 {
                        out.splice(end..end, piece.iter().copied());
                    }
                }
                Edit::Cut { at: a } => out.truncate(at(a)),
            }
        }
        out
    }
}

const SSE_SEEDS: &[&[u8]] = &[
    b"event: status_update_event\r\ndata: {\"appId\":\"/a\"}\r\n\r\n: keep-alive\n\nid: 7\ndata: a\ndata: b\n\nretry: 100\n\n",
    b"\xEF\xBB\xBFevent: deployment_success\ndata: {\"plan\":{}}\n\n",
    b"event:api_post_event\rdata:{}\r\r",
];
const SSE_TOKENS: &[&[u8]] = &[
    b"event:",
    b"data:",
    b"id:",
    b"retry:",
    b": ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b" ",
    b"{}",
    b"\xEF\xBB\xBF",
    b"\xFF",
    b"status_update_event",
];

#[derive(Debug, TypeGenerator)]
struct SseInput {
    stream: Mutation,
    /// Where the stream is cut into reads (each a length, wrapped).
    cuts: Vec<u16>,
}

/// Any byte stream, read in any pieces: the same events as read whole, or the same error, and
/// never a panic.
#[test]
fn sse() {
    check!(name = "sse")
        .with_type::<SseInput>()
        .with_iterations(3_000)
        .for_each(|input| {
            let bytes = input.stream.apply(SSE_SEEDS, SSE_TOKENS);
            let whole = SseParser::new(256).feed(&bytes);
            let mut parser = SseParser::new(256);
            let (mut events, mut error) = (Vec::new(), None);
            let mut rest = &bytes[..];
            let mut cuts = input.cuts.iter().cycle();
            while !rest.is_empty() && error.is_none() {
                let n = cuts.next().map_or(rest.len(), |&c| usize::from(c)) % rest.len() + 1;
                match parser.feed(&rest[..n]) {
                    Ok(e) => events.extend(e),
                    Err(e) => error = Some(e),
                }
                rest = &rest[n..];
            }
            match (whole, error) {
                (Ok(all), None) => assert_eq!(all, events),
                (Err(a), Some(b)) => assert_eq!(a, b),
                (w, e) => panic!("whole: {w:?}, in pieces: {e:?}"),
            }
        });
}

const APPS_SEEDS: &[&[u8]] = &[
    br#"{"apps":[{"id":"/a","instances":2,"labels":{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"a.com","HAPROXY_0_MODE":"http"},"portDefinitions":[{"port":10000,"protocol":"tcp"}],"healthChecks":[{"protocol":"HTTP","path":"/"}],"tasks":[{"id":"a.1","host":"10.0.0.1","ports":[31000],"state":"TASK_RUNNING","healthCheckResults":[{"alive":true}]}]}]}"#,
    br#"{"apps":[{"id":"/b/c","labels":{"HAPROXY_GROUP":"external","HAPROXY_0_PORT":"10010","HAPROXY_1_MODE":"tcp"},"container":{"type":"DOCKER","docker":{"network":"BRIDGE","portMappings":[{"containerPort":80,"hostPort":0,"servicePort":10001,"protocol":"tcp,udp"},{"containerPort":53,"servicePort":10002,"protocol":"udp"}]}},"tasks":[{"id":"b.1","host":"10.0.0.2","ports":[31001,31002],"state":"TASK_RUNNING"}]}]}"#,
    br#"{"apps":[{"id":"/d","labels":{"HAPROXY_GROUP":"external"},"ipAddress":{"networkName":"x","discovery":{"ports":[{"number":80,"name":"http","protocol":"tcp"}]}},"networks":[{"mode":"container","name":"x"}],"container":{"portMappings":[{"containerPort":80,"servicePort":0}]},"tasks":[{"id":"d.1","host":"agent-1","ipAddresses":[{"ipAddress":"198.18.0.9","protocol":"IPv4"}],"ports":[],"state":"TASK_RUNNING"}],"deployments":[{"id":"x"}]}]}"#,
];
const APPS_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"65536",
    b"1e999",
    b"0.5",
    b"\"\"",
    b"\"/\"",
    b"\"\\u0000\"",
    b"\"labels\":{}",
    b"\"HAPROXY_0_PORT\":\"80\"",
    b"\"HAPROXY_0_BIND_ADDR\":\"::1\"",
    b"\"HAPROXY_1_VHOST\":\"x.com\"",
    b"\"servicePort\":10003",
    b"\"ports\":[1,2,3]",
    b"\"TASK_KILLING\"",
];

/// Broken `/v2/apps` bodies, all the way through the model: an error or a state, never a
/// panic; every rejection names an app of the body; `mlb explain` agrees with what is exposed;
/// no service takes a port mlb listens on.
#[test]
fn apps() {
    let mut opts = ModelOptions::new(vec!["*".into()]);
    opts.reserved_ports = [80, 443, 9090, 9091].into();
    check!(name = "apps")
        .with_type::<Mutation>()
        .with_iterations(3_000)
        .for_each(|m| {
            let body = m.apply(APPS_SEEDS, APPS_TOKENS);
            let Ok(list) = parse_app_list_json(&body) else {
                return;
            };
            assert!(list.apps.iter().all(|a| !a.id.is_empty()));
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let (state, _) = desired_state(&list, &opts, &HealthCache::new(), now);
            let ids: Vec<&str> = list
                .apps
                .iter()
                .map(|a| a.id.as_str())
                .chain(list.invalid.iter().map(|e| e.app_id.as_str()))
                .collect();
            for r in &state.rejected {
                assert!(ids.contains(&r.app_id.as_str()), "{r:?} names no app");
            }
            for s in state.http.values() {
                assert!(!opts.reserved_ports.contains(&s.service_port), "{s:?}");
            }
            for s in state.l4.values() {
                assert!(!opts.reserved_ports.contains(&s.key.port), "{s:?}");
            }
            let explained = explain(&list, &opts, &HealthCache::new(), now);
            assert!(consistent_with(&explained, &state));
        });
}

const LABEL_KEYS: &[&str] = &[
    "GROUP",
    "MODE",
    "VHOST",
    "PATH",
    "PORT",
    "AUTH",
    "BIND_ADDR",
    "BIND_OPTIONS",
    "BALANCE",
    "BACKEND_WEIGHT",
    "SSL_CERT",
    "BACKEND_NETWORK_ALLOWED_ACL",
    "HTTP_BACKEND_PROXYPASS_PATH",
    "HTTP_BACKEND_REVPROXY_PATH",
    "REDIRECT_TO_HTTPS",
    "USE_HSTS",
    "STICKY",
    "ENABLED",
    "BACKEND_HEALTHCHECK_PORT_INDEX",
    "FRONTEND_BACKEND_GLUE",
];
const LABEL_SEEDS: &[&[u8]] = &[
    b"http",
    b"a.com,b.com",
    b"/api",
    b"10001",
    b"realm:user:$6$0123456789abcdef$hashhashhash",
    b"198.18.0.1",
    b"ssl-min-ver TLSv1.2 alpn h2,http/1.1 verify required ca-file /etc/ssl/ca.pem",
    b"leastconn",
    b"-5",
    b"/etc/ssl/x.pem,/etc/ssl/y.pem",
    b"10.0.0.0/8 fd00::/8",
    b"true",
];
const LABEL_TOKENS: &[&[u8]] = &[
    b":",
    b",",
    b"/",
    b" ",
    b"$",
    b"*",
    b"..",
    b"\t",
    b"-",
    b"0",
    b"65536",
    b"::",
    b"\xC3\xA9",
    b"$1$",
    b"$2y$04$",
    b"$5$",
    b"{",
    b"%",
];

#[derive(Debug, TypeGenerator)]
struct LabelInput {
    /// (key index, port index, value).
    labels: Vec<(u8, u8, Mutation)>,
}

/// The warnings and the error (last) of parsing port `index`'s labels; the error names one of
/// the labels.
fn said_of(labels: &BTreeMap<String, String>, index: usize) -> Vec<String> {
    let (result, mut said) = port_labels(labels, index);
    if let Err(e) = result {
        assert!(labels.contains_key(&e.label), "{e}");
        said.push(e.to_string());
    }
    said
}

/// An auth label's value with the letters and digits of its hash (past the second `:`)
/// rotated, the first four characters (a crypt scheme such as `$2y$`) and every other
/// character kept: parsed the same way, with another secret.
fn other_hash(value: &str) -> String {
    let Some((at, _)) = value.match_indices(':').nth(1) else {
        return value.to_owned();
    };
    let (head, hash) = value.split_at(at + 1);
    let rotated = hash.chars().enumerate().map(|(i, c)| match c {
        _ if i < 4 => c,
        'a'..='z' => (b'a' + (c as u8 - b'a' + 13) % 26) as char,
        'A'..='Z' => (b'A' + (c as u8 - b'A' + 13) % 26) as char,
        '0'..='9' => (b'0' + (c as u8 - b'0' + 5) % 10) as char,
        _ => c,
    });
    head.chars().chain(rotated).collect()
}

/// Random label sets: parsed, or refused with an error naming one of the labels, never a
/// panic; an auth label's hash never appears in an error or a warning (they are logged).
#[test]
fn labels() {
    check!(name = "labels")
        .with_type::<LabelInput>()
        .with_iterations(5_000)
        .for_each(|input| {
            let mut labels = BTreeMap::new();
            for (key, n, value) in &input.labels {
                let name = LABEL_KEYS[usize::from(*key) % LABEL_KEYS.len()];
                let key = match name {
                    "GROUP" => format!("HAPROXY_{name}"),
                    _ => format!("HAPROXY_{}_{name}", n % 3),
                };
                let value = value.apply(LABEL_SEEDS, LABEL_TOKENS);
                labels.insert(key, String::from_utf8_lossy(&value).into_owned());
            }
            let secrets: Vec<&str> = labels
                .iter()
                .filter(|(k, _)| k.ends_with("_AUTH"))
                .filter_map(|(_, v)| v.splitn(3, ':').nth(2))
                .filter(|hash| hash.len() >= 6)
                // Echoing another label's value that happens to contain it is no leak.
                .filter(|hash| {
                    labels
                        .iter()
                        .all(|(k, v)| k.ends_with("_AUTH") || !v.contains(hash))
                })
                .collect();
            // The same labels with every auth hash's letters and digits changed (its scheme
            // prefix kept): a hash found in the text of both is the parser's own wording
            // ("…realm:user:crypt-hash", "…password hash…"), not an echo of the label.
            let other_hashes: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = if k.ends_with("_AUTH") {
                        other_hash(v)
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect();
            for index in 0..3 {
                let said = said_of(&labels, index);
                let said_otherwise = said_of(&other_hashes, index);
                assert_eq!(said.len(), said_otherwise.len(), "{said:?}");
                for (text, otherwise) in said.iter().zip(&said_otherwise) {
                    assert!(
                        !secrets
                            .iter()
                            .any(|s| text.contains(s) && !otherwise.contains(s)),
                        "secret in {text}"
                    );
                }
            }
            if let Err(e) = app_labels(&labels) {
                assert!(labels.contains_key(&e.label), "{e}");
            }
        });
}

/// A proxy with an open app (`a.example.com`) and an app behind basic auth (`b.example.com`, also
/// reachable on its service port and through `:9091`), on a runtime of its own: the harness is
/// synchronous and libFuzzer calls it millions of times, so all of this is made once.
struct Lab {
    rt: tokio::runtime::Runtime,
    _proxy: HttpProxy,
    frontends: [std::net::SocketAddr; 3],
    _backends: [TestBackend; 2],
}

const CREDENTIALS: &str = "YWxpY2U6b3BlbiBzZXNhbWU="; // alice:open sesame
/// Set by the panic hook: a panic in a proxy task (which tokio would swallow) fails the input.
static PANICKED: AtomicBool = AtomicBool::new(false);

fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            previous(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (proxy, backends, port) = rt.block_on(async {
            let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
            let proxy = start_proxy(vec![], |_| {});
            let mut open = service("/a", &[&a]);
            open.vhosts = vec!["a.example.com".into()];
            let mut closed = service("/b", &[&b]);
            closed.vhosts = vec!["b.example.com".into()];
            closed.auth = Some(BasicAuth {
                realm: "b".into(),
                user: "alice".into(),
                password_hash: bcrypt::hash("open sesame", 4).unwrap(),
            });
            let port = closed.service_port;
            apply(&proxy, vec![open, closed]);
            (proxy, [a, b], port)
        });
        let frontends = [
            proxy.local_addr("http").unwrap(),
            proxy.local_addr("appid").unwrap(),
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        ];
        Lab {
            rt,
            _proxy: proxy,
            frontends,
            _backends: backends,
        }
    })
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HTTP_SEEDS: &[&[u8]] = &[
    b"GET /x?y=1 HTTP/1.1\r\nHost: a.example.com\r\n\r\nGET / HTTP/1.1\r\nHost: b.example.com\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: B.example.com:80\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: b.example.com\r\nAuthorization: Basic YWxpY2U6d3Jvbmc=\r\nX-Marathon-App-Id: /b\r\n\r\n",
    b"GET http://b.example.com/ HTTP/1.1\r\nHost: a.example.com\r\nX-Marathon-App-Id: /a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    // An HTTP/2 request (HPACK: indexed, literal and Huffman-coded fields), then its reset and
    // a window update.
    b"PRI * HTTP/2.0\x0d\x0a\x0d\x0aSM\x0d\x0a\x0d\x0a\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00&\x01\x05\x00\x00\x00\x01\x82\x86\x84A\x0db.example.com@\x88%\xa8I\xe9[\xa9}\x7f\x89%\xa8I\xe9[\xb8\xe8\xb4\xbf\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x10\x00",
];
const HTTP_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b" ",
    b":",
    b"\t",
    b"\x00",
    b"Host: b.example.com\r\n",
    b"Host: a.example.com\r\n",
    b"X-Marathon-App-Id: /b\r\n",
    b"Authorization: Basic \r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 0\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"http://b.example.com",
    b"/../",
    b"%2F",
    b"HTTP/1.1",
    b"0\r\n\r\n",
    // HTTP/2: a RST_STREAM's frame header, indexed fields, a table size update, a Huffman string.
    b"\x00\x00\x04\x03\x00\x00\x00\x00\x01",
    b"\x82\x86\x84",
    b"\x3f\xe1\x1f",
    b"\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff",
];

#[derive(Debug, TypeGenerator)]
struct HttpInput {
    /// `:80`, `:9091` or the protected app's service port.
    frontend: u8,
    request: Mutation,
}

/// Mangled request heads through the proxy's three frontends: the answer is HTTP (or a close),
/// nothing panics, and the app behind basic auth never answers a request that does not carry
/// its credentials, whatever the framing, Host, authority or `X-Marathon-App-Id` games.
#[test]
fn http() {
    check!(name = "http")
        .with_type::<HttpInput>()
        .with_iterations(300)
        .for_each(|input| {
            // Looked up inside: the harness must be unwind-safe, and the proxy is not.
            let lab = lab();
            let bytes = input.request.apply(HTTP_SEEDS, HTTP_TOKENS);
            let to = lab.frontends[usize::from(input.frontend) % lab.frontends.len()];
            let answer = lab.rt.block_on(exchange(to, &bytes));
            assert!(
                answer.is_empty()
                    || answer.starts_with(b"HTTP/1.")
                    || bytes.starts_with(H2_PREFACE),
                "{:?}",
                String::from_utf8_lossy(&answer)
            );
            let from_b = answer
                .windows(b"\r\nx-backend: b\r\n".len())
                .any(|w| w.eq_ignore_ascii_case(b"\r\nx-backend: b\r\n"));
            let has_credentials = bytes
                .windows(CREDENTIALS.len())
                .any(|w| w == CREDENTIALS.as_bytes());
            assert!(
                !from_b || has_credentials,
                "protected app answered without credentials"
            );
            assert!(!PANICKED.load(Ordering::SeqCst), "a proxy task panicked");
        });
    // And it still serves a good request afterwards.
    let lab = lab();
    let http = lab.frontends[0];
    let got = lab
        .rt
        .block_on(async { get(&http_client(), http, "a.example.com", "/", &[]).await });
    assert_eq!(got.status, 200);
}

/// Sends `bytes`, closes the sending side and reads the answer until the proxy closes (or 2 s).
async fn exchange(to: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut c = tokio::net::TcpStream::connect(to).await.unwrap();
    let _ = c.write_all(bytes).await;
    let _ = c.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut answer)).await;
    answer
}
