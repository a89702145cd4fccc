//! `mlb explain -m MARATHON` reads Marathon once and says, per app and port, what is exposed
//! where or exactly why not, naming the app and the field of a bad label; without a running mlb
//! the admin-API mode says what to do.
use std::process::Command;

use mlb_tests::{
    marathon_sim::{MarathonSim, SimConfig},
    mlb_bin::mlb_bin,
};
use serde_json::{Value, json};

fn explain(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(mlb_bin())
        .arg("explain")
        .args(args)
        .output()
        .expect("run mlb explain");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_from_marathon_names_apps_ports_and_reasons() {
    let sim = MarathonSim::start(SimConfig {
        apps: vec![
            json!({"id": "/shop/web", "instances": 2,
                   "portDefinitions": [{"port": 10101}],
                   "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": "shop.example.test"}}),
            json!({"id": "/shop/db", "instances": 1,
                   "portDefinitions": [{"port": 10102}],
                   "labels": {"HAPROXY_GROUP": "internal"}}),
            json!({"id": "/shop/bad", "instances": 1,
                   "portDefinitions": [{"port": 10103}],
                   "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_PORT": "abc"}}),
        ],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // Default: the answer only, one line per app, no log lines, no colours off a terminal.
    let url = sim.url();
    let (ok, summary, err) =
        tokio::task::spawn_blocking(move || explain(&["-m", &url, "--group", "external"]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    assert_eq!(err, "", "nothing but the answer");
    assert!(!summary.contains('\x1b'), "no ANSI codes: {summary:?}");
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(lines.len(), 3, "one line per app:\n{summary}");
    assert!(
        lines[0].starts_with("/shop/bad: NOT EXPOSED")
            && lines[0].contains("HAPROXY_0_PORT")
            && lines[0].contains("abc"),
        "{summary}"
    );
    assert!(
        lines[1].starts_with("/shop/db: NOT EXPOSED") && lines[1].contains("internal"),
        "{summary}"
    );
    assert!(
        lines[2].starts_with("/shop/web: exposed: 10101/tcp")
            && lines[2].contains("vhosts shop.example.test")
            && lines[2].contains("2 backend(s)"),
        "{summary}"
    );

    // -v: every port, backend and excluded task.
    let url = sim.url();
    let (ok, text, err) =
        tokio::task::spawn_blocking(move || explain(&["-v", "-m", &url, "--group", "external"]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    let web_tasks = sim.tasks("/shop/web");
    assert_eq!(web_tasks.len(), 2);
    assert!(text.contains("/shop/web: exposed"), "{text}");
    assert!(text.contains("vhosts shop.example.test"), "{text}");
    for t in &web_tasks {
        assert!(
            text.contains(&t.id),
            "task {} listed as a backend:\n{text}",
            t.id
        );
    }
    let db = text
        .lines()
        .skip_while(|l| !l.starts_with("/shop/db"))
        .take(2)
        .collect::<Vec<_>>();
    assert!(db[0].contains("NOT EXPOSED"), "{text}");
    assert!(
        db.join("\n").contains("internal"),
        "group mismatch named: {text}"
    );
    let bad = text
        .lines()
        .skip_while(|l| !l.starts_with("/shop/bad"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(bad.contains("NOT EXPOSED"), "{text}");
    assert!(
        bad.contains("HAPROXY_0_PORT") && bad.contains("abc"),
        "field and value named: {bad}"
    );

    // One app, as JSON.
    let url = sim.url();
    let (ok, json_out, err) = tokio::task::spawn_blocking(move || {
        explain(&["-m", &url, "--group", "external", "--json", "/shop/web"])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let apps: Value = serde_json::from_str(&json_out).unwrap();
    let apps = apps.as_array().unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0]["app_id"], "/shop/web");
    assert_eq!(apps[0]["exposed"], true);
    assert_eq!(apps[0]["ports"][0]["service_port"], 10101);
    assert_eq!(apps[0]["ports"][0]["backends"].as_array().unwrap().len(), 2);

    let url = sim.url();
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || explain(&["-m", &url, "--group", "external", "/nope"]))
            .await
            .unwrap();
    assert!(!ok);
    assert!(err.contains("/nope: no such app"), "{err}");
}

#[test]
fn explain_without_a_running_mlb_says_what_to_do() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, _, err) = explain(&["--admin-addr", &format!("127.0.0.1:{port}")]);
    assert!(!ok);
    assert!(err.contains("is `mlb run` running?"), "{err}");
}
