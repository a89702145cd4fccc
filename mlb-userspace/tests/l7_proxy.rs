//! The HTTP proxy as marathon-lb users see it: vhost and path routing, redirects, auth,
//! allow-lists, rewrites, sticky sessions, balancing, redispatch, draining. Real backends, a real
//! proxy and real clients on 127.0.0.1.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use base64::Engine as _;
use l7_common::*;
use mlb::model::{Balance, BasicAuth, HealthCheck, HealthCheckKind};
use sha_crypt::PasswordHasher as _;

fn addr(proxy: &mlb::proxy::HttpProxy, frontend: &str) -> std::net::SocketAddr {
    proxy.local_addr(frontend).unwrap()
}

#[tokio::test]
async fn vhosts_route_by_host_case_insensitively_and_unknown_hosts_get_503() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let proxy = start_proxy(vec![], |_| {});
    let mut sa = service("/a", &[&a]);
    sa.vhosts = vec!["a.example.com".into(), "www.a.example.com".into()];
    let mut sb = service("/b", &[&b]);
    sb.vhosts = vec!["b.example.com".into()];
    apply(&proxy, vec![sa, sb]);
    let c = http_client();
    let http = addr(&proxy, "http");
    for host in ["a.example.com", "A.Example.COM:80", "www.a.example.com"] {
        let got = get(&c, http, host, "/", &[]).await;
        assert_eq!(got.status, 200, "{host}");
        assert_eq!(got.backend(), Some("a"), "{host}");
    }
    assert_eq!(
        get(&c, http, "b.example.com", "/", &[]).await.backend(),
        Some("b")
    );
    let before = a.count() + b.count();
    let got = get(&c, http, "nobody.example.com", "/", &[]).await;
    assert_eq!(got.status, 503);
    assert!(got.body.len() < 300, "short page: {}", got.body);
    assert_eq!(
        a.count() + b.count(),
        before,
        "an unknown host is never forwarded"
    );
}

#[tokio::test]
async fn paths_and_backend_weight_order_overlapping_routes() {
    let (root, api, beta) = (
        TestBackend::start("root").await,
        TestBackend::start("api").await,
        TestBackend::start("beta").await,
    );
    let proxy = start_proxy(vec![], |_| {});
    let mut s_root = service("/root", &[&root]);
    s_root.vhosts = vec!["x.example.com".into()];
    let mut s_api = service("/api", &[&api]);
    s_api.vhosts = vec!["x.example.com".into()];
    s_api.paths = vec!["/api".into(), "/v2".into()];
    s_api.weight = 1;
    let mut s_beta = service("/beta", &[&beta]);
    s_beta.vhosts = vec!["x.example.com".into()];
    s_beta.paths = vec!["/api/beta".into()];
    s_beta.weight = 3;
    apply(&proxy, vec![s_root, s_api, s_beta]);
    let c = http_client();
    let http = addr(&proxy, "http");
    for (path, want) in [
        ("/api/beta/x", "beta"),
        ("/api/x", "api"),
        ("/v2/y?q=1", "api"),
        ("/", "root"),
        ("/apix", "api"),
    ] {
        let got = get(&c, http, "x.example.com", path, &[]).await;
        assert_eq!(got.backend(), Some(want), "{path}");
        assert_eq!(
            got.header("x-seen-path"),
            Some(path),
            "path is forwarded unchanged"
        );
    }
}

#[tokio::test]
async fn app_id_frontend_routes_on_the_header_and_service_ports_serve_their_app() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let proxy = start_proxy(vec![], |_| {});
    let sa = service("/tweeter", &[&a]);
    let sb = service("/other", &[&b]);
    let port_a = sa.service_port;
    apply(&proxy, vec![sa, sb]);
    let c = http_client();
    let appid = addr(&proxy, "appid");
    let got = get(&c, appid, "lb", "/", &[("x-marathon-app-id", "/Tweeter")]).await;
    assert_eq!(got.backend(), Some("a"));
    let got = get(&c, appid, "lb", "/", &[("x-marathon-app-id", "/other")]).await;
    assert_eq!(got.backend(), Some("b"));
    assert_eq!(get(&c, appid, "lb", "/", &[]).await.status, 503);
    let port = format!("127.0.0.1:{port_a}").parse().unwrap();
    assert_eq!(
        get(&c, port, "anything", "/", &[]).await.backend(),
        Some("a")
    );
}

#[tokio::test]
async fn removed_service_port_is_closed_and_others_stay_open() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let s1 = service("/one", &[&a]);
    let s2 = service("/two", &[&a]);
    let (p1, p2) = (s1.service_port, s2.service_port);
    let gone = s2.key.clone();
    apply(&proxy, vec![s1.clone(), s2]);
    let c = http_client();
    let a1 = format!("127.0.0.1:{p1}").parse().unwrap();
    let a2: std::net::SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    // A keep-alive connection to port 2 opened before the change.
    let mut held = h1_over(tokio::net::TcpStream::connect(a2).await.unwrap()).await;
    assert_eq!(
        read(held.send_request(request("x", "/", false)).await.unwrap())
            .await
            .status,
        200
    );
    remove(&proxy, &[&gone]);
    assert_eq!(get(&c, a1, "x", "/", &[]).await.status, 200);
    assert!(
        tokio::net::TcpStream::connect(a2).await.is_err(),
        "removed port closed"
    );
    assert_eq!(proxy.service_listeners(), vec![a1]);
    // The connection accepted before the change still answers (503: no service on the port).
    let got = read(held.send_request(request("x", "/", false)).await.unwrap()).await;
    assert_eq!(got.status, 503);
}

#[tokio::test]
async fn redirect_to_https_and_hsts() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/secure", &[&a]);
    s.vhosts = vec!["secure.example.com".into()];
    s.redirect_to_https = true;
    s.use_hsts = true;
    apply(&proxy, vec![s]);
    let c = http_client();
    let got = get(
        &c,
        addr(&proxy, "http"),
        "secure.example.com",
        "/p?q=1",
        &[],
    )
    .await;
    assert_eq!(got.status, 301);
    let https_port = addr(&proxy, "https").port();
    assert_eq!(
        got.header("location"),
        Some(format!("https://secure.example.com:{https_port}/p?q=1").as_str())
    );
    assert_eq!(a.count(), 0);
    // On the service port: no redirect, HSTS on the backend's answer.
    let port = format!("127.0.0.1:{}", proxy.service_listeners()[0].port())
        .parse()
        .unwrap();
    let got = get(&c, port, "secure.example.com", "/", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("strict-transport-security"),
        Some("max-age=15768000")
    );
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn basic_auth_with_each_crypt_hash_kind() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let hashes = [
        (
            "sha512",
            sha_crypt::ShaCrypt::SHA512
                .hash_password_with_salt(b"open sesame", b"0123456789abcdef")
                .unwrap()
                .to_string(),
        ),
        (
            "sha256",
            sha_crypt::ShaCrypt::SHA256
                .hash_password_with_salt(b"open sesame", b"0123456789abcdef")
                .unwrap()
                .to_string(),
        ),
        ("bcrypt", bcrypt::hash("open sesame", 4).unwrap()),
    ];
    let list = hashes
        .iter()
        .map(|(kind, hash)| {
            let mut s = service(&format!("/{kind}"), &[&a]);
            s.vhosts = vec![format!("{kind}.example.com")];
            s.auth = Some(BasicAuth {
                realm: format!("realm-{kind}"),
                user: "alice".into(),
                password_hash: hash.clone(),
            });
            s
        })
        .collect();
    apply(&proxy, list);
    let c = http_client();
    let http = addr(&proxy, "http");
    for (kind, _) in &hashes {
        let host = format!("{kind}.example.com");
        let got = get(&c, http, &host, "/", &[]).await;
        assert_eq!(got.status, 401, "{kind}");
        assert_eq!(
            got.header("www-authenticate"),
            Some(format!("Basic realm=\"realm-{kind}\"").as_str())
        );
        let wrong = basic("alice", "guess");
        assert_eq!(
            get(&c, http, &host, "/", &[("authorization", &wrong)])
                .await
                .status,
            401
        );
        let right = basic("alice", "open sesame");
        let got = get(&c, http, &host, "/", &[("authorization", &right)]).await;
        assert_eq!(got.status, 200, "{kind}");
        assert_eq!(got.backend(), Some("a"));
    }
    // marathon-lb applied auth on :80/:443 only, so its service port and :9091 opened a
    // protected app to anyone: mlb asks for the credentials on every path to the app.
    let right = basic("alice", "open sesame");
    for port in proxy.service_listeners() {
        assert_eq!(get(&c, port, "x", "/", &[]).await.status, 401, "{port}");
        let got = get(&c, port, "x", "/", &[("authorization", &right)]).await;
        assert_eq!(got.status, 200, "{port}");
    }
    let appid = addr(&proxy, "appid");
    for (kind, _) in &hashes {
        let app = [("x-marathon-app-id", format!("/{kind}"))];
        let app: Vec<(&str, &str)> = app.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(get(&c, appid, "x", "/", &app).await.status, 401, "{kind}");
        let mut with = app.clone();
        with.push(("authorization", &right));
        assert_eq!(get(&c, appid, "x", "/", &with).await.status, 200, "{kind}");
    }
}

/// Two apps on one vhost, one with auth: as with marathon-lb, the auth applies to every request
/// for that host, also those the open app serves (a protected vhost stays protected after
/// migration); an auth limited to a path applies to that path only.
#[tokio::test]
async fn auth_on_a_shared_vhost_covers_every_app_on_it() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let proxy = start_proxy(vec![], |_| {});
    let hash = bcrypt::hash("pw", 4).unwrap();
    let auth = |realm: &str| BasicAuth {
        realm: realm.into(),
        user: "u".into(),
        password_hash: hash.clone(),
    };
    let mut open = service("/open", &[&a]);
    open.vhosts = vec!["shared.example.com".into()];
    let mut closed = service("/closed", &[&b]);
    closed.vhosts = vec!["shared.example.com".into()];
    closed.weight = -1; // matched after /open: /open serves the host
    closed.auth = Some(auth("host"));
    let mut api_open = service("/api-open", &[&a]);
    api_open.vhosts = vec!["paths.example.com".into()];
    let mut admin = service("/admin", &[&b]);
    admin.vhosts = vec!["paths.example.com".into()];
    admin.paths = vec!["/admin".into()];
    admin.auth = Some(auth("admin"));
    apply(&proxy, vec![open, closed, api_open, admin]);
    let c = http_client();
    let http = addr(&proxy, "http");
    let right = basic("u", "pw");
    let got = get(&c, http, "shared.example.com", "/", &[]).await;
    assert_eq!(
        got.status, 401,
        "the open app's requests are challenged too"
    );
    let got = get(
        &c,
        http,
        "shared.example.com",
        "/",
        &[("authorization", &right)],
    )
    .await;
    assert_eq!((got.status.as_u16(), got.backend()), (200, Some("a")));
    assert_eq!(
        get(&c, http, "paths.example.com", "/", &[]).await.status,
        200
    );
    assert_eq!(
        get(&c, http, "paths.example.com", "/admin/x", &[])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn allow_list_admits_listed_sources_only() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut allowed = service("/allowed", &[&a]);
    allowed.vhosts = vec!["allowed.example.com".into()];
    allowed.allowed_networks = vec![
        "10.0.0.0/8".parse().unwrap(),
        "127.0.0.0/8".parse().unwrap(),
    ];
    let mut denied = service("/denied", &[&a]);
    denied.vhosts = vec!["denied.example.com".into()];
    denied.allowed_networks = vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
    apply(&proxy, vec![allowed, denied]);
    let c = http_client();
    let http = addr(&proxy, "http");
    assert_eq!(
        get(&c, http, "allowed.example.com", "/", &[]).await.status,
        200
    );
    let got = get(&c, http, "denied.example.com", "/", &[]).await;
    assert_eq!(got.status, 403);
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn proxypass_revproxy_and_redirect_from_root() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/app", &[&a]);
    s.vhosts = vec!["app.example.com".into()];
    s.paths = vec!["/pub".into()];
    s.proxypass_path = Some("/pub".into());
    s.revproxy_path = Some("/pub".into());
    let mut r = service("/landing", &[&a]);
    r.vhosts = vec!["landing.example.com".into()];
    r.redirect_root_to = Some("/welcome".into());
    apply(&proxy, vec![s, r]);
    let c = http_client();
    let http = addr(&proxy, "http");
    let got = get(&c, http, "APP.example.com:80", "/pub/items?x=1", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-seen-path"), Some("/items?x=1"));
    assert_eq!(got.header("x-seen-host"), Some("app.example.com"));
    let got = get(&c, http, "app.example.com", "/pub/redirect?to=/login", &[]).await;
    assert_eq!(got.status, 302);
    assert_eq!(got.header("location"), Some("/pub/login"));
    let got = get(&c, http, "landing.example.com", "/", &[]).await;
    assert_eq!(got.status, 301);
    assert_eq!(got.header("location"), Some("/welcome"));
    assert_eq!(
        get(&c, http, "landing.example.com", "/x", &[]).await.status,
        200
    );
}

#[tokio::test]
async fn forwarded_headers_reach_the_backend() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["a.example.com".into()];
    apply(&proxy, vec![s]);
    let c = http_client();
    let http = addr(&proxy, "http");
    let got = get(
        &c,
        http,
        "a.example.com",
        "/",
        &[("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert_eq!(got.header("x-seen-xff"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(got.header("x-seen-xfp"), Some("http"));
    assert_eq!(
        got.header("x-seen-xfport"),
        Some(http.port().to_string().as_str())
    );
    assert_eq!(got.header("x-seen-host"), Some("a.example.com"));
}

#[tokio::test]
async fn sticky_cookie_pins_a_client_to_its_backend() {
    let backends = [
        TestBackend::start("s1").await,
        TestBackend::start("s2").await,
        TestBackend::start("s3").await,
    ];
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/sticky", &backends.iter().collect::<Vec<_>>());
    s.vhosts = vec!["sticky.example.com".into()];
    s.sticky = true;
    apply(&proxy, vec![s]);
    let c = http_client();
    let http = addr(&proxy, "http");
    let first = get(&c, http, "sticky.example.com", "/", &[]).await;
    let set_cookie = first.header("set-cookie").expect("cookie set").to_owned();
    assert!(
        set_cookie.starts_with("mesosphere_server_id="),
        "{set_cookie}"
    );
    let cookie = format!("other=1; {}", set_cookie.split(';').next().unwrap());
    for _ in 0..6 {
        let got = get(&c, http, "sticky.example.com", "/", &[("cookie", &cookie)]).await;
        assert_eq!(got.backend(), first.backend());
        assert_eq!(
            got.header("set-cookie"),
            None,
            "a valid cookie is not set again"
        );
        assert_eq!(
            got.header("x-seen-cookie"),
            Some("other=1"),
            "cookie not forwarded"
        );
    }
    // Without the cookie, roundrobin spreads requests.
    let mut seen = HashSet::new();
    for _ in 0..6 {
        seen.insert(
            get(&c, http, "sticky.example.com", "/", &[])
                .await
                .backend()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn balance_roundrobin_leastconn_and_source() {
    let backends = [
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        TestBackend::start("b3").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let proxy = start_proxy(vec![], |_| {});
    let mut rr = service("/rr", &refs);
    rr.vhosts = vec!["rr.example.com".into()];
    let mut lc = service("/lc", &refs);
    lc.vhosts = vec!["lc.example.com".into()];
    lc.balance = Balance::LeastConn;
    let mut src = service("/src", &refs);
    src.vhosts = vec!["src.example.com".into()];
    src.balance = Balance::Source;
    apply(&proxy, vec![rr, lc, src]);
    let c = http_client();
    let http = addr(&proxy, "http");

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..9 {
        let b = get(&c, http, "rr.example.com", "/", &[])
            .await
            .backend()
            .unwrap()
            .to_owned();
        *counts.entry(b).or_default() += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);

    // leastconn: two slow requests occupy two backends; the next goes to the idle one.
    let slow =
        |c: HttpClient| async move { get(&c, http, "lc.example.com", "/slow?ms=3000", &[]).await };
    let in_flight = || {
        backends
            .iter()
            .map(|b| proxy.backend_in_flight(&b.backend().id).unwrap_or(0))
            .sum::<usize>()
    };
    let s1 = tokio::spawn(slow(c.clone()));
    wait_until("first slow request in flight", || in_flight() == 1).await;
    let s2 = tokio::spawn(slow(c.clone()));
    wait_until("second slow request in flight", || in_flight() == 2).await;
    let quick = get(&c, http, "lc.example.com", "/", &[]).await;
    let (r1, r2) = (s1.await.unwrap(), s2.await.unwrap());
    let busy: HashSet<&str> = [r1.backend().unwrap(), r2.backend().unwrap()].into();
    assert_eq!(busy.len(), 2, "two slow requests on two backends");
    assert!(
        !busy.contains(quick.backend().unwrap()),
        "leastconn picked the idle backend"
    );

    // source: the same client address always lands on the same backend.
    let first = get(&c, http, "src.example.com", "/", &[])
        .await
        .backend()
        .unwrap()
        .to_owned();
    for _ in 0..6 {
        assert_eq!(
            get(&c, http, "src.example.com", "/", &[]).await.backend(),
            Some(first.as_str())
        );
    }
}

#[tokio::test]
async fn connect_failure_is_redispatched_to_another_backend() {
    let live = TestBackend::start("live").await;
    let dead = {
        let b = TestBackend::start("dead").await;
        b.backend()
    }; // dropped: its port refuses connections
    tokio::time::sleep(Duration::from_millis(50)).await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/r", &[&live]);
    s.backends.insert(0, dead);
    s.vhosts = vec!["r.example.com".into()];
    apply(&proxy, vec![s]);
    let c = http_client();
    let http = addr(&proxy, "http");
    for _ in 0..6 {
        let got = get(&c, http, "r.example.com", "/", &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.backend(), Some("live"));
    }
    // A request with a body is redispatched too (the body was never sent).
    let req = http::Request::post(format!("http://{http}/sink"))
        .header("host", "r.example.com")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"0123456789",
        )))
        .unwrap();
    for _ in 0..2 {
        let got = read(c.request(req.clone()).await.unwrap()).await;
        assert_eq!(got.body, "received=10");
    }
}

#[tokio::test]
async fn removed_backend_finishes_its_in_flight_request() {
    let (old, new) = (
        TestBackend::start("old").await,
        TestBackend::start("new").await,
    );
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/d", &[&old]);
    s.vhosts = vec!["d.example.com".into()];
    apply(&proxy, vec![s.clone()]);
    let c = http_client();
    let http = addr(&proxy, "http");
    let slow = tokio::spawn({
        let c = c.clone();
        async move { get(&c, http, "d.example.com", "/slow?ms=1500", &[]).await }
    });
    let old_id = old.backend().id;
    wait_until("slow request in flight", || {
        proxy.backend_in_flight(&old_id) == Some(1)
    })
    .await;
    s.backends = vec![new.backend()];
    let key = s.key.clone();
    apply(&proxy, vec![s]);
    assert_eq!(
        get(&c, http, "d.example.com", "/", &[]).await.backend(),
        Some("new")
    );
    let got = slow.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(
        got.backend(),
        Some("old"),
        "in-flight request finished on the removed backend"
    );
    remove(&proxy, &[&key]);
    assert_eq!(
        proxy.backend_in_flight(&old_id),
        None,
        "drained backend forgotten"
    );
}

#[tokio::test]
async fn twenty_reconfigurations_under_load_lose_no_request() {
    let backends = [
        TestBackend::start("l1").await,
        TestBackend::start("l2").await,
        TestBackend::start("l3").await,
    ];
    let proxy = start_proxy(vec![], |_| {});
    let base = {
        let mut s = service("/load", &[&backends[0]]);
        s.vhosts = vec!["load.example.com".into()];
        s
    };
    apply(&proxy, vec![base.clone()]);
    let http = addr(&proxy, "http");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let c = http_client();
            let (mut ok, mut failed) = (0usize, Vec::new());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && tokio::time::Instant::now() < deadline
            {
                let got = get(&c, http, "load.example.com", "/", &[]).await;
                if got.status == 200 {
                    ok += 1;
                } else {
                    failed.push(got.status);
                }
            }
            (ok, failed)
        }));
    }
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut s = base.clone();
        // Rotate backends, weights and an extra vhost each time; never an empty set.
        s.backends = vec![backends[i % 3].backend(), backends[(i + 1) % 3].backend()];
        s.weight = i as i32;
        if i % 2 == 0 {
            s.vhosts.push(format!("extra{i}.example.com"));
        }
        let other = {
            let mut o = service(&format!("/other{i}"), &[&backends[2]]);
            o.vhosts = vec![format!("other{i}.example.com")];
            o
        };
        apply(&proxy, vec![s, other]);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 20, "load ran ({total} requests)");
}

#[tokio::test]
async fn failing_health_check_takes_a_backend_out_of_rotation() {
    let (good, bad) = (
        TestBackend::start("good").await,
        TestBackend::start("bad").await,
    );
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/hc", &[&good, &bad]);
    s.vhosts = vec!["hc.example.com".into()];
    s.health_check = Some(HealthCheck {
        kind: HealthCheckKind::Tcp,
        port_index: 0,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
        max_consecutive_failures: 1,
    });
    apply(&proxy, vec![s.clone()]);
    let c = http_client();
    let http = addr(&proxy, "http");
    let mut seen = HashSet::new();
    for _ in 0..4 {
        seen.insert(
            get(&c, http, "hc.example.com", "/", &[])
                .await
                .backend()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(seen.len(), 2);
    let bad_id = bad.backend().id;
    drop(bad); // its port now refuses connections: the TCP check fails
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !proxy.unhealthy_backends().contains(&bad_id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad backend detected in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..6 {
        assert_eq!(
            get(&c, http, "hc.example.com", "/", &[]).await.backend(),
            Some("good")
        );
    }
}

#[tokio::test]
async fn silent_backends_get_504_and_stalled_bodies_are_cut() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |c| c.timeouts.server = Duration::from_millis(500));
    let mut s = service("/t", &[&a]);
    s.vhosts = vec!["t.example.com".into()];
    apply(&proxy, vec![s]);
    let c = http_client();
    let http = addr(&proxy, "http");
    let got = get(&c, http, "t.example.com", "/slow?ms=3000", &[]).await;
    assert_eq!(got.status, 504);
    let req = http::Request::get(format!("http://{http}/stall"))
        .header("host", "t.example.com")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .expect("the proxy ends a stalled body by itself");
    assert!(body.is_err(), "a cut body is an error, not a short success");
    assert_eq!(get(&c, http, "t.example.com", "/", &[]).await.status, 200);
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_is_reported_and_the_rest_applies() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let http = addr(&proxy, "http");
    let mut clash = service("/clash", &[&a]);
    clash.service_port = http.port();
    let mut fine = service("/fine", &[&a]);
    fine.vhosts = vec!["fine.example.com".into()];
    let fine_port = fine.service_port;
    let errors = proxy.apply_changes(&upserts(vec![clash, fine]));
    assert_eq!(errors.len(), 1, "{errors:?}");
    let msg = errors[0].to_string();
    assert!(
        msg.contains("/clash") && msg.contains(&http.port().to_string()),
        "{msg}"
    );
    let c = http_client();
    assert_eq!(
        get(&c, http, "fine.example.com", "/", &[]).await.status,
        200
    );
    let port = format!("127.0.0.1:{fine_port}").parse().unwrap();
    assert_eq!(get(&c, port, "x", "/", &[]).await.status, 200);
}
