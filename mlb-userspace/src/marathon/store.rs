//! The apps mlb last read from Marathon, kept as a parsed [`AppList`] and updated in place: a
//! task event re-reads one app, and only that app is replaced.
use super::types::AppList;

/// Marathon's apps as last read, in API order (service-port auto-assignment depends on it).
#[derive(Debug, Default)]
pub struct AppStore {
    list: AppList,
}

impl AppStore {
    /// The parsed apps and the ones that did not parse, for the model.
    pub fn list(&self) -> &AppList {
        &self.list
    }

    /// Replaces everything with a full read (`GET /v2/apps`, parsed app by app by the watcher).
    pub fn replace_all(&mut self, list: AppList) {
        self.list = list;
    }

    /// Replaces or adds the apps of `changed` (each read whole) and drops `removed`.
    pub fn update(&mut self, changed: AppList, removed: &[String]) {
        for id in removed {
            self.remove(id);
        }
        for app in changed.apps {
            self.list.invalid.retain(|e| e.app_id != app.id);
            match self.list.apps.iter_mut().find(|a| a.id == app.id) {
                Some(slot) => *slot = app,
                None => self.list.apps.push(app),
            }
        }
        for e in changed.invalid {
            // The previous good version is not kept: Marathon now serves this one, and routing
            // to tasks of a definition Marathon replaced would be a guess. The rejection names
            // the field so the operator can fix it.
            self.list.apps.retain(|a| a.id != e.app_id);
            self.list.invalid.retain(|old| old.app_id != e.app_id);
            self.list.invalid.push(e);
        }
    }

    fn remove(&mut self, id: &str) {
        self.list.apps.retain(|a| a.id != id);
        self.list.invalid.retain(|e| e.app_id != id);
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
}
