//! The model kept up to date incrementally: after a full pass, a change to a few apps
//! re-evaluates only those apps, and says which services changed, so a task event costs
//! microseconds of model work instead of a pass over every app of the cluster.
//!
//! An app's outcome depends on the other apps in three ways only, and a change that touches one
//! of them falls back to the full pass (whose result is, by construction, what the incremental
//! path must reproduce; the tests check it):
//! - **port claims**: the first app in id order gets a contested service port. A dirty app whose
//!   new claims collide with another app's, or whose ports were contested, re-runs everything;
//! - **deployment groups** (`HAPROXY_DEPLOYMENT_GROUP`) merge several Marathon apps;
//! - **auto-assigned service ports** of IP-per-task apps depend on the API order.
//!
//! Pure: no I/O, no clock reads (`now` only ages the health cache).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::SystemTime,
};

use crate::{
    marathon::types::{AppList, AppRefs},
    model::{
        DesiredState, HealthCache, HttpServiceKey, L4ServiceKey, ModelOptions, Protocol,
        build::{Evaluation, evaluate},
        explain::AppExplanation,
        explanations::Explanations,
        ports::PortSource,
    },
};

/// Which services a step changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// A full pass ran (the keys are still exact: they are the difference of the two states).
    pub full: bool,
    pub l4: BTreeSet<L4ServiceKey>,
    pub http: BTreeSet<HttpServiceKey>,
}

/// Keys whose value differs between `old` and `new`: added, changed or removed (what a full pass
/// reports as changed, so dataplanes still get exact changes after one).
fn changed_keys<K: Ord + Clone, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> BTreeSet<K> {
    new.iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, _)| k)
        .chain(old.keys().filter(|k| !new.contains_key(k)))
        .cloned()
        .collect()
}

/// What one app put into the state, so it can be taken out again.
#[derive(Clone, Debug, Default)]
struct Contribution {
    l4: Vec<L4ServiceKey>,
    http: Vec<HttpServiceKey>,
    claims: Vec<(u16, Protocol)>,
}

/// The desired state, its explanations, and the bookkeeping to update them app by app.
#[derive(Clone, Debug, Default)]
pub struct ModelState {
    state: DesiredState,
    explanations: Explanations,
    health: HealthCache,
    contributions: HashMap<String, Contribution>,
    owners: BTreeMap<(u16, Protocol), String>,
    contested: BTreeSet<(u16, Protocol)>,
    /// Marathon app ids whose outcome depends on other apps (deployment-group members, apps
    /// with auto-assigned ports).
    entangled: HashSet<String>,
    /// Full passes run (for tests and the status page).
    full_passes: u64,
}

impl ModelState {
    /// The current desired state.
    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    /// Why each app is or is not exposed, by app id.
    pub fn explanations(&self) -> &Explanations {
        &self.explanations
    }

    /// How many full passes ran.
    pub fn full_passes(&self) -> u64 {
        self.full_passes
    }

    /// Recomputes everything from `apps`.
    pub fn full(&mut self, apps: &AppList, opts: &ModelOptions, now: SystemTime) -> Changed {
        let eval = evaluate(&apps.refs(), opts, &self.health, now);
        self.full_passes += 1;
        let old = std::mem::take(&mut self.state);
        self.install(eval);
        // The keys that differ, so the dataplanes still get only what changed.
        let new = &self.state;
        let mut changed = Changed {
            full: true,
            ..Changed::default()
        };
        changed.l4 = changed_keys(&old.l4, &new.l4);
        changed.http = changed_keys(&old.http, &new.http);
        changed
    }

    /// Updates the state after the apps named in `dirty` changed or disappeared (`apps` is the
    /// whole current list, `subset` its apps named in `dirty`, e.g. [`AppList::subset`]).
    /// Re-evaluates only those apps when that is exact, else everything.
    pub fn update(
        &mut self,
        apps: &AppList,
        subset: AppRefs<'_>,
        dirty: &BTreeSet<String>,
        opts: &ModelOptions,
        now: SystemTime,
    ) -> Changed {
        if dirty.is_empty() {
            return Changed::default();
        }
        if dirty.iter().any(|id| self.entangled.contains(id)) {
            return self.full(apps, opts, now);
        }
        if subset
            .apps
            .iter()
            .any(|a| a.labels.contains_key("HAPROXY_DEPLOYMENT_GROUP"))
        {
            return self.full(apps, opts, now);
        }
        let eval = evaluate(&subset, opts, &self.health, now);
        if !self.isolated(&eval, dirty) {
            return self.full(apps, opts, now);
        }
        self.splice(eval, dirty)
    }

    /// Whether the dirty apps' new outcome cannot depend on, or change, any other app's.
    fn isolated(&self, eval: &Evaluation, dirty: &BTreeSet<String>) -> bool {
        if !eval.claims.contested.is_empty() {
            return false;
        }
        if eval.explanations.iter().any(entangled_explanation) {
            return false;
        }
        let new_claims_free = eval.claims.owners.keys().all(|port| {
            !self.contested.contains(port)
                && self
                    .owners
                    .get(port)
                    .is_none_or(|owner| dirty.contains(owner))
        });
        let old_claims_uncontested = dirty.iter().all(|id| {
            self.contributions
                .get(id)
                .is_none_or(|c| c.claims.iter().all(|p| !self.contested.contains(p)))
        });
        new_claims_free && old_claims_uncontested
    }

    /// Replaces the dirty apps' contributions with `eval`'s.
    fn splice(&mut self, eval: Evaluation, dirty: &BTreeSet<String>) -> Changed {
        let mut changed = Changed::default();
        for id in dirty {
            if let Some(old) = self.contributions.remove(id) {
                for key in old.l4 {
                    self.state.l4.remove(&key);
                    changed.l4.insert(key);
                }
                for key in old.http {
                    self.state.http.remove(&key);
                    changed.http.insert(key);
                }
                for port in old.claims {
                    self.owners.remove(&port);
                }
            }
            self.explanations.remove(id);
            self.state.rejected.retain(|r| &r.app_id != id);
            self.state.warnings.retain(|w| &w.app_id != id);
        }
        self.health = eval.health;
        for (port, (owner, _)) in eval.claims.owners {
            self.contributions
                .entry(owner.clone())
                .or_default()
                .claims
                .push(port);
            self.owners.insert(port, owner);
        }
        for (key, svc) in eval.state.l4 {
            self.contributions
                .entry(svc.app_id.clone())
                .or_default()
                .l4
                .push(key);
            changed.l4.insert(key);
            self.state.l4.insert(key, svc);
        }
        for (key, svc) in eval.state.http {
            self.contributions
                .entry(key.app_id.clone())
                .or_default()
                .http
                .push(key.clone());
            changed.http.insert(key.clone());
            self.state.http.insert(key, svc);
        }
        // Same order as a full pass: by app id (stable within an app).
        for r in eval.state.rejected {
            let at = self
                .state
                .rejected
                .partition_point(|x| (&x.app_id, x.port_index) <= (&r.app_id, r.port_index));
            self.state.rejected.insert(at, r);
        }
        let mut warnings = eval.state.warnings;
        warnings.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        for w in warnings {
            let at = self
                .state
                .warnings
                .partition_point(|x| x.app_id <= w.app_id);
            self.state.warnings.insert(at, w);
        }
        for e in eval.explanations {
            self.explanations.insert(e);
        }
        changed
    }

    fn install(&mut self, eval: Evaluation) {
        let mut contributions: HashMap<String, Contribution> = HashMap::new();
        for (key, svc) in &eval.state.l4 {
            contributions
                .entry(svc.app_id.clone())
                .or_default()
                .l4
                .push(*key);
        }
        for key in eval.state.http.keys() {
            contributions
                .entry(key.app_id.clone())
                .or_default()
                .http
                .push(key.clone());
        }
        let mut owners = BTreeMap::new();
        for (port, (owner, _)) in &eval.claims.owners {
            contributions
                .entry(owner.clone())
                .or_default()
                .claims
                .push(*port);
            owners.insert(*port, owner.clone());
        }
        let mut entangled = HashSet::new();
        for e in &eval.explanations {
            if entangled_explanation(e) {
                entangled.extend(e.marathon_app_ids.iter().cloned());
                entangled.insert(e.app_id.clone());
            }
        }
        self.state = eval.state;
        self.health = eval.health;
        self.explanations = eval.explanations.into_iter().collect();
        self.contributions = contributions;
        self.owners = owners;
        self.contested = eval.claims.contested;
        self.entangled = entangled;
    }
}

/// A merged deployment group, or an app with auto-assigned service ports.
fn entangled_explanation(e: &AppExplanation) -> bool {
    e.marathon_app_ids.len() != 1
        || e.marathon_app_ids[0] != e.app_id
        || e.ports.iter().any(|p| p.source == PortSource::AutoAssigned)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Added, changed and removed keys are reported, unchanged ones are not; replaying the
    /// changed keys from `new` onto `old` gives `new`.
    #[test]
    fn changed_keys_are_exactly_the_difference() {
        let old: BTreeMap<u16, &str> = [(1, "a"), (2, "b"), (3, "c")].into();
        let new: BTreeMap<u16, &str> = [(1, "a"), (2, "B"), (4, "d")].into();
        let keys = changed_keys(&old, &new);
        assert_eq!(keys, [2, 3, 4].into());
        let mut replay = old.clone();
        for k in &keys {
            match new.get(k) {
                Some(v) => replay.insert(*k, *v),
                None => replay.remove(k),
            };
        }
        assert_eq!(replay, new);
        assert!(changed_keys(&new, &new).is_empty());
        assert_eq!(changed_keys(&new, &BTreeMap::new()), [1, 2, 4].into());
    }

    /// Marathon's apps in API order, updated as a task event updates them: a changed app is
    /// replaced in place, a new one appended, a removed one dropped.
    struct Apps(Vec<Value>);

    impl Apps {
        fn new(apps: Vec<Value>) -> Self {
            Apps(apps)
        }

        fn update(&mut self, changed: &[Value], removed: &[String]) {
            self.0
                .retain(|a| !removed.iter().any(|id| a["id"] == id.as_str()));
            for app in changed {
                match self.0.iter_mut().find(|a| a["id"] == app["id"]) {
                    Some(slot) => slot.clone_from(app),
                    None => self.0.push(app.clone()),
                }
            }
        }

        fn list(&self) -> AppList {
            AppList::from_values(self.0.clone())
        }
    }

    fn tcp(id: &str, port: u16, tasks: usize) -> Value {
        json!({
            "id": id, "instances": tasks,
            "portDefinitions": [{"port": port}],
            "labels": {"HAPROXY_GROUP": "external"},
            "tasks": (0..tasks).map(|i| json!({
                "id": format!("{}.t{i}", id.trim_start_matches('/')),
                "host": "198.18.2.10", "ports": [31000 + i], "state": "TASK_RUNNING"
            })).collect::<Vec<_>>(),
        })
    }

    fn web(id: &str, port: u16, vhost: &str, tasks: usize) -> Value {
        let mut app = tcp(id, port, tasks);
        app["labels"]["HAPROXY_0_VHOST"] = json!(vhost);
        app
    }

    fn ippt(id: &str) -> Value {
        json!({
            "id": id, "instances": 1,
            "ipAddress": {"networkName": "dcos",
                          "discovery": {"ports": [{"number": 8080, "name": "http", "protocol": "tcp"}]}},
            "labels": {"HAPROXY_GROUP": "external"},
            "tasks": [{"id": format!("{}.t0", id.trim_start_matches('/')),
                       "host": "198.18.2.10", "ports": [], "state": "TASK_RUNNING",
                       "ipAddresses": [{"ipAddress": "198.18.3.7", "protocol": "IPv4"}]}],
        })
    }

    fn zdd(id: &str, port: u16, tasks: usize, started: &str) -> Value {
        let mut app = tcp(id, port, tasks);
        app["labels"]["HAPROXY_DEPLOYMENT_GROUP"] = json!("shop");
        app["labels"]["HAPROXY_DEPLOYMENT_STARTED_AT"] = json!(started);
        app["labels"]["HAPROXY_0_PORT"] = json!("10400");
        app
    }

    /// Plays `steps` (each: changed apps, removed ids) through the incremental path and checks
    /// after each that state and explanations equal a full pass over the same apps. Returns the
    /// number of full passes the incremental model needed.
    fn replay(start: Vec<Value>, steps: Vec<(Vec<Value>, Vec<&str>)>) -> u64 {
        let opts = ModelOptions::new(vec!["external".into()]);
        let now = SystemTime::UNIX_EPOCH;
        let mut apps = Apps::new(start);
        let mut inc = ModelState::default();
        inc.full(&apps.list(), &opts, now);
        let before = inc.full_passes();
        for (i, (changed, removed)) in steps.into_iter().enumerate() {
            let removed: Vec<String> = removed.into_iter().map(str::to_owned).collect();
            let mut dirty: BTreeSet<String> = removed.iter().cloned().collect();
            dirty.extend(changed.iter().map(|v| v["id"].as_str().unwrap().to_owned()));
            apps.update(&changed, &removed);
            let list = apps.list();
            inc.update(&list, list.subset(&dirty), &dirty, &opts, now);
            let mut reference = ModelState::default();
            reference.full(&list, &opts, now);
            assert_eq!(inc.state(), reference.state(), "state after step {i}");
            assert_eq!(
                inc.explanations(),
                reference.explanations(),
                "explanations after step {i}"
            );
        }
        inc.full_passes() - before
    }

    #[test]
    fn task_changes_to_independent_apps_are_spliced_without_a_full_pass() {
        let full = replay(
            vec![
                tcp("/a", 10001, 2),
                tcp("/b", 10002, 2),
                web("/w", 10003, "w.example.test", 2),
            ],
            vec![
                (vec![tcp("/a", 10001, 3)], vec![]),
                (vec![web("/w", 10003, "w.example.test", 1)], vec![]),
                (vec![web("/w", 10003, "other.example.test", 1)], vec![]),
                (vec![tcp("/c", 10004, 1)], vec![]),
                (vec![], vec!["/b"]),
                (
                    vec![json!({"id": "/bad", "portDefinitions": [{"port": "x"}]})],
                    vec![],
                ),
                (vec![tcp("/a", 10009, 0)], vec![]),
            ],
        );
        assert_eq!(full, 0);
    }

    #[test]
    fn contested_ports_groups_and_auto_assignment_fall_back_to_a_full_pass() {
        let full = replay(
            vec![
                tcp("/a", 10001, 1),
                tcp("/z", 10001, 1), // refused: /a has the port
                ippt("/auto"),
                zdd("/shop-blue", 0, 2, "2026-01-01T00:00:00Z"),
            ],
            vec![
                // /a leaves: /z must now get the port (a full pass).
                (vec![], vec!["/a"]),
                // A new app takes a port someone holds: refused, as in a full pass.
                (vec![tcp("/y", 10001, 1)], vec![]),
                (vec![ippt("/auto")], vec![]),
                (
                    vec![zdd("/shop-green", 0, 1, "2026-02-01T00:00:00Z")],
                    vec![],
                ),
                // Independent again: no full pass needed.
                (vec![tcp("/q", 10020, 1)], vec![]),
            ],
        );
        assert_eq!(full, 4, "one full pass per entangled step");
    }

    #[test]
    fn the_changed_keys_name_what_moved() {
        let opts = ModelOptions::new(vec!["external".into()]);
        let now = SystemTime::UNIX_EPOCH;
        let mut apps = Apps::new(vec![
            tcp("/a", 10001, 1),
            web("/w", 10003, "w.example.test", 1),
        ]);
        let mut m = ModelState::default();
        assert!(m.full(&apps.list(), &opts, now).full);
        apps.update(&[tcp("/a", 10001, 2)], &[]);
        let dirty = ["/a".to_owned()].into();
        let list = apps.list();
        let changed = m.update(&list, list.subset(&dirty), &dirty, &opts, now);
        assert!(!changed.full);
        assert_eq!(
            changed.l4.iter().map(|k| k.port).collect::<Vec<_>>(),
            [10001]
        );
        assert!(changed.http.is_empty());
    }
}
