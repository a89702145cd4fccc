//! `mlb-demo` (what `cargo xtask demo` runs) works end to end on loopback: every sample app
//! answers through mlb, and scale changes reach mlb and real requests without a reload.
use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mlb_tests::mlb_bin::mlb_bin;

#[test]
fn demo_routes_sample_apps_and_scales_on_loopback() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlb-demo"))
        .args([
            "--dataplane",
            "userspace",
            "--duration",
            "8",
            "--scale-every",
            "2",
        ])
        .env("MLB_BIN", mlb_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mlb-demo");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // 8 s of demo plus start-up and shutdown; bounded, and killed (by PID) past it.
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for mlb-demo") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let ctx = format!("--- stdout\n{out}\n--- stderr\n{err}");
    let status = status.unwrap_or_else(|| panic!("mlb-demo ran over 40 s\n{ctx}"));
    assert!(status.success(), "mlb-demo exited with {status}\n{ctx}");
    assert!(!out.contains("FAILED"), "a check failed\n{ctx}");

    assert!(out.contains("dataplane:  userspace"), "{ctx}");
    assert!(out.contains("explain --admin-addr 127.0.0.1:"), "{ctx}");
    assert!(out.contains("curl -H 'Host: web.example.test'"), "{ctx}");
    assert!(out.contains("nc -u -w1 127.0.0.1 10002"), "{ctx}");
    // Every sample app answered through mlb, each by one of its tasks.
    for needle in [
        "/demo/tcp-echo: echoed \"hello mlb\"; an HTTP request on it was answered by demo_tcp-echo.",
        "/demo/udp-echo: answered by demo_udp-echo.",
        "Host: web.example.test: answered by demo_web.",
        "Host: api.example.test: answered by demo_api.",
        "secure.example.test: answered by demo_secure.",
        "Host: secure.example.test: 301 → https://secure.example.test:",
    ] {
        assert!(out.contains(needle), "missing {needle:?}\n{ctx}");
    }
    // Scale changes: the first takes /demo/web from 3 to 1 instance; mlb then routes to exactly
    // one backend, which answers; the next takes it to 4.
    assert!(out.contains("scaling /demo/web 3 → 1"), "{ctx}");
    assert!(out.contains("mlb routes /demo/web to 1 backend "), "{ctx}");
    assert!(
        out.contains("2/2 requests to /demo/web answered, by demo_web."),
        "{ctx}"
    );
    assert!(out.contains("scaling /demo/web 1 → 4"), "{ctx}");
    assert!(out.contains("mlb routes /demo/web to 4 backends "), "{ctx}");
    assert!(
        out.contains("mlb routes /demo/tcp-echo to 4 backends "),
        "{ctx}"
    );
    assert!(out.contains("ran throughout without a reload"), "{ctx}");
    assert!(out.contains("stopped mlb and the simulator"), "{ctx}");
}
