//! Zero-downtime deployment groups (marathon-lb §5.3): apps sharing `HAPROXY_DEPLOYMENT_GROUP`
//! are merged into one app `/<group>`, so both colours sit behind one service; some of the old
//! colour's tasks are marked draining as the new colour becomes healthy.
use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
};

use crate::{
    marathon::types::{App, Task},
    model::{
        Rejected,
        labels::{AppLabels, app_labels},
    },
};

/// An app as the rest of the model sees it: a Marathon app, or a merged deployment group.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveApp<'a> {
    /// The app (for a group: the old colour's definition, id `/<group>`, every colour's tasks).
    /// Borrowed from Marathon's list unless merged: a model pass copies no app.
    pub app: Cow<'a, App>,
    /// Marathon app ids it comes from, oldest colour first.
    pub source_ids: Vec<String>,
    /// Task ids of the old colour that take no new connections.
    pub draining: BTreeSet<String>,
    /// Position of its first member in the API order (service-port auto-assignment uses it).
    pub order: usize,
}

/// `HAPROXY_DEPLOYMENT_STARTED_AT` as a sortable key: zdd writes naive ISO timestamps
/// (`2016-02-01T14:13:42.499089`), which sort as text. Absent or malformed: the earliest.
fn started_at_key(labels: &AppLabels) -> Option<&str> {
    labels.deployment_started_at.as_deref().filter(|s| {
        let b = s.as_bytes();
        b.len() >= 19
            && b.iter().take(19).enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T' || *c == b' ',
                13 | 16 => *c == b':',
                _ => c.is_ascii_digit(),
            })
    })
}

/// Merges deployment groups. `healthy(app, task)` says whether a task counts as a healthy new
/// instance (running, and passing Marathon health when the app has checks). Apps with invalid
/// deployment labels are rejected alone; warnings name malformed start times.
pub fn merge_deployment_groups<'a>(
    apps: &[&'a App],
    healthy: impl Fn(&App, &Task) -> bool,
) -> (Vec<EffectiveApp<'a>>, Vec<Rejected>, Vec<(String, String)>) {
    let mut out: Vec<EffectiveApp<'a>> = Vec::new();
    let mut rejected = Vec::new();
    let mut warnings = Vec::new();
    let mut groups: BTreeMap<String, Vec<(usize, &App, AppLabels)>> = BTreeMap::new();
    for (order, app) in apps.iter().enumerate() {
        let labels = match app_labels(&app.labels) {
            Ok(l) => l,
            Err(e) => {
                rejected.push(Rejected {
                    app_id: app.id.clone(),
                    port_index: None,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if labels.deployment_started_at.is_some() && started_at_key(&labels).is_none() {
            warnings.push((
                app.id.clone(),
                format!(
                    "label HAPROXY_DEPLOYMENT_STARTED_AT={:?} is not an ISO timestamp; treated as the oldest",
                    labels.deployment_started_at.as_deref().unwrap_or_default()
                ),
            ));
        }
        match labels.deployment_group.clone() {
            Some(group) => groups.entry(group).or_default().push((order, app, labels)),
            None => out.push(EffectiveApp {
                app: Cow::Borrowed(*app),
                source_ids: vec![app.id.clone()],
                draining: BTreeSet::new(),
                order,
            }),
        }
    }
    for (group, mut members) in groups {
        // Oldest first; on a tie the app seen first in the API counts as newer (marathon-lb).
        members.sort_by(|a, b| {
            started_at_key(&a.2)
                .cmp(&started_at_key(&b.2))
                .then(b.0.cmp(&a.0))
        });
        if members.len() == 2 && members[1].2.deployment_new_instances.is_some() {
            // Hybrid deployment or rollback: the colour scaled most recently is the new one
            // (marathon-lb), unless it is the smaller one: zdd's kills scale the old colour
            // down, and taking it for the new one then would drain the new colour's tasks
            // while zdd waits for the old ones, which never come.
            let scaled = |a: &App| {
                a.version_info
                    .as_ref()
                    .and_then(|v| v.last_scaling_at.clone())
            };
            let (older, newer) = (members[0].1, members[1].1);
            if scaled(older) > scaled(newer) && older.instances >= newer.instances {
                members.swap(0, 1);
            }
        }
        let order = members.iter().map(|m| m.0).min().unwrap_or_default();
        let source_ids: Vec<String> = members.iter().map(|m| m.1.id.clone()).collect();
        let mut merged = members[0].1.clone();
        merged.id = format!("/{group}");
        let mut draining = BTreeSet::new();
        if let Some(((_, new, new_labels), olds)) =
            members.split_last().filter(|(_, o)| !o.is_empty())
        {
            let healthy_new = new.tasks.iter().filter(|t| healthy(new, t)).count();
            let old_instances: usize = olds
                .iter()
                .map(|(_, a, _)| a.instances.map_or(a.tasks.len(), |i| i as usize))
                .sum();
            let target = new_labels
                .deployment_target_instances
                .or(new.instances)
                .unwrap_or(1) as usize;
            let drainable = (healthy_new + old_instances).saturating_sub(target);
            let mut old_tasks: Vec<&Task> = olds.iter().flat_map(|(_, a, _)| &a.tasks).collect();
            old_tasks.sort_by(|a, b| a.id.cmp(&b.id));
            let n = old_tasks.len().min(healthy_new).min(drainable);
            draining.extend(old_tasks.iter().take(n).map(|t| t.id.clone()));
            merged.tasks = olds
                .iter()
                .flat_map(|(_, a, _)| a.tasks.iter().cloned())
                .chain(new.tasks.iter().cloned())
                .collect();
            merged.readiness_check_results = members
                .iter()
                .flat_map(|(_, a, _)| a.readiness_check_results.iter().cloned())
                .collect();
        }
        out.push(EffectiveApp {
            app: Cow::Owned(merged),
            source_ids,
            draining,
            order,
        });
    }
    out.sort_by_key(|e| e.order);
    (out, rejected, warnings)
}
