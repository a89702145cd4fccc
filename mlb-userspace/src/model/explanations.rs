//! The explanations of every app, shared between the model and the published status without
//! copying 10,000 entries at each change: they are split into shards by a hash of the app id,
//! each behind an `Arc`, so a change to a few apps copies only the shards they fall in.
use std::{
    collections::BTreeMap,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::Arc,
};

use super::explain::AppExplanation;

/// Shards: with 10,000 apps about 160 entries each, so an update copies ~1/64 of the map.
const SHARDS: usize = 64;

type Shard = BTreeMap<String, Arc<AppExplanation>>;

/// Why each app is or is not exposed, by app id. Cloning is cheap (one `Arc` per shard).
#[derive(Clone, Debug, PartialEq)]
pub struct Explanations {
    shards: Vec<Arc<Shard>>,
}

impl Default for Explanations {
    fn default() -> Self {
        Explanations {
            shards: vec![Arc::default(); SHARDS],
        }
    }
}

impl FromIterator<AppExplanation> for Explanations {
    fn from_iter<I: IntoIterator<Item = AppExplanation>>(iter: I) -> Self {
        let mut shards: Vec<Shard> = vec![Shard::new(); SHARDS];
        for e in iter {
            shards[shard_of(&e.app_id)].insert(e.app_id.clone(), Arc::new(e));
        }
        Explanations {
            shards: shards.into_iter().map(Arc::new).collect(),
        }
    }
}

/// A fixed hash (not randomised per process): the shard of an id never changes.
fn shard_of(app_id: &str) -> usize {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(app_id);
    usize::try_from(hash % SHARDS as u64).unwrap_or(0)
}

impl Explanations {
    /// The explanation of `app_id`.
    pub fn get(&self, app_id: &str) -> Option<&Arc<AppExplanation>> {
        self.shards[shard_of(app_id)].get(app_id)
    }

    /// Every explanation, by app id (sorted on each call: for the admin API's listings).
    pub fn values(&self) -> impl Iterator<Item = &Arc<AppExplanation>> {
        let mut all: Vec<(&String, &Arc<AppExplanation>)> =
            self.shards.iter().flat_map(|s| s.iter()).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(_, e)| e)
    }

    /// How many apps are explained.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Whether no app is explained.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.is_empty())
    }

    /// Adds or replaces the explanation of its app (copies its shard if it is shared).
    pub fn insert(&mut self, e: AppExplanation) {
        let shard = Arc::make_mut(&mut self.shards[shard_of(&e.app_id)]);
        shard.insert(e.app_id.clone(), Arc::new(e));
    }

    /// Removes the explanation of `app_id` (copies its shard if it is shared).
    pub fn remove(&mut self, app_id: &str) {
        let i = shard_of(app_id);
        if self.shards[i].contains_key(app_id) {
            Arc::make_mut(&mut self.shards[i]).remove(app_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explained(id: &str) -> AppExplanation {
        AppExplanation {
            app_id: id.into(),
            marathon_app_ids: vec![id.into()],
            networking: None,
            exposed: false,
            problem: None,
            warnings: Vec::new(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn a_change_copies_one_shard_and_listing_is_sorted() {
        let ids: Vec<String> = (0..500).rev().map(|i| format!("/app-{i:03}")).collect();
        let mut model: Explanations = ids.iter().map(|id| explained(id)).collect();
        let published = model.clone();
        model.insert(explained("/new"));
        model.remove("/app-007");
        let shared = (0..SHARDS)
            .filter(|&i| Arc::ptr_eq(&model.shards[i], &published.shards[i]))
            .count();
        assert!(shared >= SHARDS - 2, "{shared} shards still shared");
        assert_eq!(published.len(), 500);
        assert!(published.get("/app-007").is_some() && published.get("/new").is_none());
        assert_eq!(model.len(), 500);
        assert!(model.get("/app-007").is_none() && model.get("/new").is_some());
        let listed: Vec<&str> = model.values().map(|e| e.app_id.as_str()).collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(listed, sorted);
    }
}
