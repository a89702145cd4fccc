//! zdd's decisions, against the cases of marathon-lb's `tests/test_zdd.py` and the two port
//! shapes.
use serde_json::{Value, json};

use super::{
    ZddError,
    plan::{self, Drain, DrainInput, Finish, Resume, Sizing},
};
use crate::stats::csv::{self, Record};

const SIZING: Sizing = Sizing {
    initial_instances: 1,
    new_instances: 0,
};

/// The app file a user passes: `portDefinitions` only (zdd.py crashes on these).
fn app_file() -> Value {
    json!({
        "id": "/nginx",
        "instances": 3,
        "portDefinitions": [{"port": 10000, "protocol": "tcp"}],
        "labels": {"HAPROXY_DEPLOYMENT_GROUP": "nginx", "HAPROXY_DEPLOYMENT_ALT_PORT": "10001",
                   "HAPROXY_0_MODE": "http"},
    })
}

#[test]
fn a_first_deploy_is_blue_on_the_apps_own_port() {
    let new = plan::prepare(&app_file(), None, SIZING, "2026-01-01T00:00:00").unwrap();
    assert_eq!(new["id"], "/nginx-blue");
    assert_eq!(new["instances"], 3);
    assert_eq!(new["portDefinitions"][0]["port"], 10000);
    assert_eq!(plan::label(&new, plan::COLOUR), "blue");
    assert_eq!(plan::label(&new, plan::PORT0), "10000");
    assert_eq!(plan::label(&new, plan::TARGET), "3");
    assert_eq!(plan::label(&new, plan::APP_ID), "/nginx");
    assert_eq!(plan::proxy_name(&new), "nginx_10000");
}

#[test]
fn the_next_deploy_takes_the_other_colour_and_port() {
    let blue = plan::prepare(&app_file(), None, SIZING, "2026-01-01T00:00:00").unwrap();
    let green = plan::prepare(&app_file(), Some(&blue), SIZING, "2026-01-02T00:00:00").unwrap();
    assert_eq!(green["id"], "/nginx-green");
    assert_eq!(
        green["portDefinitions"][0]["port"], 10001,
        "the alternate port"
    );
    assert_eq!(green["instances"], 1, "--initial-instances");
    assert_eq!(
        plan::label(&green, plan::TARGET),
        "3",
        "the live app's size"
    );
    // And back: blue again, on the original port, read from the legacy `ports` of Marathon ≤1.4.
    let mut live_green = green.clone();
    live_green["ports"] = json!([10001]);
    live_green
        .as_object_mut()
        .unwrap()
        .remove("portDefinitions");
    let blue2 = plan::prepare(&app_file(), Some(&live_green), SIZING, "2026-01-03").unwrap();
    assert_eq!(blue2["id"], "/nginx-blue");
    assert_eq!(blue2["portDefinitions"][0]["port"], 10000);
}

#[test]
fn container_port_mappings_are_the_first_service_port() {
    let mut app = app_file();
    app.as_object_mut().unwrap().remove("portDefinitions");
    app["container"] = json!({"portMappings": [{"containerPort": 80, "servicePort": 10000}]});
    let blue = plan::prepare(&app, None, SIZING, "t1").unwrap();
    let green = plan::prepare(&app, Some(&blue), SIZING, "t2").unwrap();
    assert_eq!(green["container"]["portMappings"][0]["servicePort"], 10001);
    assert!(green.get("portDefinitions").is_none());
}

#[test]
fn a_hybrid_deploy_stops_at_its_split() {
    let blue = plan::prepare(&app_file(), None, SIZING, "t1").unwrap();
    let sizing = Sizing {
        initial_instances: 5,
        new_instances: 2,
    };
    let green = plan::prepare(&app_file(), Some(&blue), sizing, "t2").unwrap();
    assert_eq!(green["instances"], 2, "min(initial, new instances)");
    assert_eq!(plan::goal(&green).unwrap(), 2);
    let mut old = blue.clone();
    old["instances"] = json!(1);
    assert_eq!(plan::finish(&old, &green, 0).unwrap(), Finish::Hybrid);
    old["instances"] = json!(2);
    assert_eq!(plan::finish(&old, &green, 0).unwrap(), Finish::No);
}

#[test]
fn missing_labels_are_exit_4_and_bad_resumes_exit_3() {
    let mut app = app_file();
    app["labels"]
        .as_object_mut()
        .unwrap()
        .remove(plan::ALT_PORT);
    let e = plan::prepare(&app, None, SIZING, "t").unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    let e = plan::resume_roles(vec![app_file()], Resume::Current).unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    assert_eq!(ZddError::Declined.exit_code(), 1);
}

#[test]
fn resuming_orders_the_colours_by_start_time() {
    let blue = plan::prepare(&app_file(), None, SIZING, "2026-01-01T00:00:00").unwrap();
    let green = plan::prepare(&app_file(), Some(&blue), SIZING, "2026-01-02T00:00:00").unwrap();
    let both = || vec![green.clone(), blue.clone()];
    let (old, new) = plan::resume_roles(both(), Resume::Current).unwrap();
    assert_eq!(
        (plan::id(&old), plan::id(&new)),
        ("/nginx-blue", "/nginx-green")
    );
    let (old, new) = plan::resume_roles(both(), Resume::Previous).unwrap();
    assert_eq!(
        (plan::id(&old), plan::id(&new)),
        ("/nginx-green", "/nginx-blue")
    );
    let e = plan::resume_roles(both(), Resume::No).unwrap_err();
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn scaling_grows_by_half_then_jumps_to_the_target() {
    assert_eq!(plan::next_instances(1, 10, 10, 0), 2);
    assert_eq!(plan::next_instances(2, 10, 10, 0), 3);
    assert_eq!(plan::next_instances(4, 10, 10, 0), 6);
    assert_eq!(
        plan::next_instances(6, 8, 10, 0),
        10,
        "reaches the old size: target"
    );
    assert_eq!(plan::next_instances(1, 10, 10, 3), 4, "--linear-increase");
    assert_eq!(plan::next_instances(9, 10, 10, 3), 10, "capped");
}

fn task(id: &str, port: u16) -> Value {
    json!({"id": id, "host": "10.0.6.25", "ports": [port]})
}

/// A stats CSV of proxy `nginx_10000` with `(server, status, scur)` rows.
fn lb_stats(servers: &[(&str, &str, u32)]) -> Vec<Record> {
    let cols = csv::COLUMNS;
    let mut text = format!("# {},\n", cols.join(","));
    for (sv, status, scur) in servers {
        let row: Vec<String> = cols
            .iter()
            .map(|c| match *c {
                "pxname" => "nginx_10000".into(),
                "svname" => (*sv).into(),
                "status" => (*status).into(),
                "scur" => scur.to_string(),
                "qcur" => "0".into(),
                _ => String::new(),
            })
            .collect();
        text += &format!("{},\n", row.join(","));
    }
    csv::parse(&text).unwrap()
}

#[test]
fn old_tasks_are_killed_once_drained_on_every_load_balancer() {
    let old = [task("old.1", 31001), task("old.2", 31002)];
    let lb1 = lb_stats(&[
        ("10_0_6_25_31001", "MAINT", 0),
        ("10_0_6_25_31002", "MAINT", 0),
        ("10_0_6_25_31003", "UP", 0),
    ]);
    let lb2 = lb_stats(&[
        ("10_0_6_25_31001", "MAINT", 0),
        ("10_0_6_25_31002", "MAINT", 3),
        ("10_0_6_25_31003", "UP", 0),
    ]);
    let stats = [lb1.clone(), lb2];
    let input = DrainInput {
        stats: &stats,
        pxname: "nginx_10000",
        old_tasks: &old,
        new_tasks: &[task("new.1", 31003)],
        expected_listeners: 3,
        target: 1,
    };
    assert_eq!(
        plan::drained(&input, false),
        Drain::Drained(vec!["old.1".into()])
    );
    assert_eq!(
        plan::drained(&input, true),
        Drain::Drained(vec!["old.1".into(), "old.2".into()]),
        "after --max-wait, MAINT everywhere is enough"
    );
    let short = [lb1];
    let missing = DrainInput {
        stats: &short,
        expected_listeners: 4,
        ..input
    };
    assert!(matches!(plan::drained(&missing, false), Drain::Wait(_)));
}

/// Old tasks UP and a new one MAINT: the load balancers took the old app for the new one (it
/// was scaled last); waiting for old tasks to drain would last until --max-wait.
#[test]
fn new_tasks_draining_means_the_new_app_must_grow_first() {
    let old = [task("old.1", 31001), task("old.2", 31002)];
    let new = [task("new.1", 31003)];
    let stats = [lb_stats(&[
        ("10_0_6_25_31001", "UP", 0),
        ("10_0_6_25_31002", "UP", 1),
        ("10_0_6_25_31003", "MAINT", 0),
    ])];
    let input = DrainInput {
        stats: &stats,
        pxname: "nginx_10000",
        old_tasks: &old,
        new_tasks: &new,
        expected_listeners: 3,
        target: 2,
    };
    assert_eq!(plan::drained(&input, false), Drain::Inverted);
    let none_draining = [lb_stats(&[
        ("10_0_6_25_31001", "UP", 0),
        ("10_0_6_25_31002", "UP", 1),
        ("10_0_6_25_31003", "UP", 0),
    ])];
    let input = DrainInput {
        stats: &none_draining,
        ..input
    };
    assert!(matches!(plan::drained(&input, false), Drain::Wait(_)));
}

#[test]
fn finishing_needs_the_target_and_every_old_task_drained() {
    let blue = plan::prepare(&app_file(), None, SIZING, "t1").unwrap();
    let mut green = plan::prepare(&app_file(), Some(&blue), SIZING, "t2").unwrap();
    let mut old = blue.clone();
    old["instances"] = json!(2);
    green["instances"] = json!(3);
    assert_eq!(plan::finish(&old, &green, 1).unwrap(), Finish::No);
    assert_eq!(plan::finish(&old, &green, 2).unwrap(), Finish::DeleteOld);
}

#[test]
fn a_task_is_found_under_mlbs_name_and_haproxys() {
    let mut t = task("a", 31001);
    t["host"] = json!("agent-1.example");
    t["ipAddresses"] = json!([{"ipAddress": "10.0.6.25"}]);
    let names = plan::server_names(&t);
    assert!(names.contains(&"10_0_6_25_31001".to_owned()), "{names:?}");
    assert!(
        names.contains(&"agent-1_example_10_0_6_25_31001".to_owned()),
        "{names:?}"
    );
}

#[test]
fn nothing_is_drained_while_both_colours_fit_the_target() {
    let blue = plan::prepare(&app_file(), None, SIZING, "t1").unwrap();
    let mut green = plan::prepare(&app_file(), Some(&blue), SIZING, "t2").unwrap();
    let mut old = blue.clone();
    (old["instances"], green["instances"]) = (json!(2), json!(1));
    assert!(
        !plan::may_drain(&old, &green).unwrap(),
        "2 + 1 <= target 3: grow first"
    );
    green["instances"] = json!(2);
    assert!(plan::may_drain(&old, &green).unwrap());
    old["instances"] = json!(0);
    assert!(!plan::may_drain(&old, &green).unwrap(), "no old task left");
}
