//! The apps mlb last read from Marathon, kept as a parsed [`AppList`] and updated in place: a
//! task event re-reads one app, and only that app is replaced.
use std::collections::{BTreeSet, HashMap};

use super::{
    task_status::{StatePatches, TaskStatus},
    types::{App, AppList, AppRefs},
};

/// Marathon's apps as last read, in API order (service-port auto-assignment depends on it).
#[derive(Debug, Default)]
pub struct AppStore {
    list: AppList,
    /// Position of each app in `list.apps` by id: a burst of 1,000 re-read apps must not scan
    /// 10,000 apps for each one.
    index: HashMap<String, usize>,
    /// Task states taken from events that reads have not confirmed yet.
    patches: StatePatches,
}

impl AppStore {
    /// The parsed apps and the ones that did not parse, for the model.
    pub fn list(&self) -> &AppList {
        &self.list
    }

    /// Replaces everything with a full read (`GET /v2/apps`, parsed app by app by the watcher).
    pub fn replace_all(&mut self, list: AppList) {
        self.list = list;
        for app in &mut self.list.apps {
            self.patches.reconcile(app);
        }
        self.patches.retain_listed(&self.list.apps);
        self.reindex();
    }

    /// Patches task states from `status_update_event`s into the apps that have these tasks
    /// (see [`super::task_status`]); returns the ids of the apps that changed.
    pub fn apply_task_statuses(&mut self, statuses: &[TaskStatus]) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        for status in statuses {
            let Some(&i) = self.index.get(&status.app_id) else {
                continue;
            };
            if self.patches.apply(&mut self.list.apps[i], status) {
                changed.insert(status.app_id.clone());
            }
        }
        changed
    }

    /// The parsed apps named in `ids`, found through the index: an event touches one app, and
    /// scanning 10,000 app ids for it cost more than the rest of the update.
    pub fn apps_named<'a>(&'a self, ids: &'a BTreeSet<String>) -> impl Iterator<Item = &'a App> {
        ids.iter()
            .filter_map(|id| self.index.get(id))
            .map(|&i| &self.list.apps[i])
    }

    /// The apps named in `ids` (parsed ones in API order, and the ones that did not parse):
    /// what an incremental model step re-evaluates.
    pub fn subset(&self, ids: &BTreeSet<String>) -> AppRefs<'_> {
        let mut at: Vec<usize> = ids
            .iter()
            .filter_map(|id| self.index.get(id))
            .copied()
            .collect();
        at.sort_unstable();
        AppRefs {
            apps: at.into_iter().map(|i| &self.list.apps[i]).collect(),
            // Few apps fail to parse: scanning them is cheap.
            invalid: self
                .list
                .invalid
                .iter()
                .filter(|e| ids.contains(&e.app_id))
                .collect(),
        }
    }

    fn reindex(&mut self) {
        self.index.clear();
        self.index.extend(
            self.list
                .apps
                .iter()
                .enumerate()
                .map(|(i, a)| (a.id.clone(), i)),
        );
    }

    /// Replaces or adds the apps of `changed` (each read whole) and drops `removed`.
    pub fn update(&mut self, changed: AppList, removed: &[String]) {
        let mut shifted = false;
        for id in removed {
            shifted |= self.remove(id);
        }
        for e in &changed.invalid {
            // The previous good version is not kept: Marathon now serves this one, and routing
            // to tasks of a definition Marathon replaced would be a guess. The rejection names
            // the field so the operator can fix it.
            shifted |= self.remove(&e.app_id);
        }
        if shifted {
            self.reindex();
        }
        for mut app in changed.apps {
            self.patches.reconcile(&mut app);
            if !self.list.invalid.is_empty() {
                self.list.invalid.retain(|e| e.app_id != app.id);
            }
            if let Some(&i) = self.index.get(&app.id) {
                self.list.apps[i] = app;
            } else {
                self.index.insert(app.id.clone(), self.list.apps.len());
                self.list.apps.push(app);
            }
        }
        self.list.invalid.extend(changed.invalid);
    }

    /// Drops the app (valid or not); true when apps after it moved (the index is stale).
    fn remove(&mut self, id: &str) -> bool {
        self.list.invalid.retain(|e| e.app_id != id);
        let before = self.list.apps.len();
        self.list.apps.retain(|a| a.id != id);
        self.list.apps.len() != before
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reread(app: serde_json::Value) -> AppList {
        AppList::from_rereads(vec![app])
    }

    fn ids(store: &AppStore) -> Vec<String> {
        store.list().apps.iter().map(|a| a.id.clone()).collect()
    }

    #[test]
    fn updates_replace_in_place_and_keep_api_order() {
        let mut store = AppStore::default();
        store.replace_all(AppList::from_values(vec![
            json!({"id": "/b"}),
            json!({"id": "/a"}),
        ]));
        assert_eq!(ids(&store), ["/b", "/a"]);
        store.update(
            AppList::from_rereads(vec![
                json!({"id": "/b", "instances": 3}),
                json!({"id": "/c"}),
            ]),
            &[],
        );
        assert_eq!(ids(&store), ["/b", "/a", "/c"]);
        assert_eq!(store.list().apps[0].instances, Some(3));
        store.update(AppList::default(), &["/a".into()]);
        assert_eq!(ids(&store), ["/b", "/c"]);
        // A removal moves the apps after it: later updates still land on the right app.
        store.update(reread(json!({"id": "/d"})), &["/b".into()]);
        store.update(reread(json!({"id": "/d", "instances": 4})), &[]);
        store.update(reread(json!({"id": "/c", "instances": 5})), &[]);
        assert_eq!(ids(&store), ["/c", "/d"]);
        assert_eq!(store.list().apps[0].instances, Some(5));
        assert_eq!(store.list().apps[1].instances, Some(4));
    }

    #[test]
    fn an_app_that_stops_parsing_is_rejected_alone_and_recovers() {
        let mut store = AppStore::default();
        store.replace_all(AppList::from_values(vec![
            json!({"id": "/a"}),
            json!({"id": "/b"}),
        ]));
        store.update(reread(json!({"id": "/a", "instances": "many"})), &[]);
        assert_eq!(ids(&store), ["/b"]);
        assert_eq!(store.list().invalid.len(), 1);
        assert_eq!(store.list().invalid[0].app_id, "/a");
        assert!(
            store.list().invalid[0].field.contains("instances"),
            "{:?}",
            store.list().invalid
        );
        store.update(reread(json!({"id": "/a", "instances": 1})), &[]);
        assert!(store.list().invalid.is_empty());
        assert_eq!(ids(&store), ["/b", "/a"]);
    }

    #[test]
    fn the_apps_of_an_event_are_found_by_id_in_api_order() {
        let mut store = AppStore::default();
        store.replace_all(AppList::from_values(vec![
            json!({"id": "/c"}),
            json!({"id": "/a"}),
            json!({"id": "/b"}),
            json!({"id": "/d"}),
        ]));
        // A removal moves the apps after it; a bad re-read leaves an invalid entry.
        store.update(
            reread(json!({"id": "/b", "instances": "many"})),
            &["/c".into()],
        );
        let ids: BTreeSet<String> = ["/d", "/b", "/a", "/gone"].map(String::from).into();
        let subset = store.subset(&ids);
        assert_eq!(subset, store.list().subset(&ids));
        let found: Vec<&str> = subset.apps.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(found, ["/a", "/d"]);
        assert_eq!(subset.invalid.len(), 1);
        assert_eq!(subset.invalid[0].app_id, "/b");
        let named: BTreeSet<&str> = store.apps_named(&ids).map(|a| a.id.as_str()).collect();
        assert_eq!(named, ["/a", "/d"].into());
    }
}
