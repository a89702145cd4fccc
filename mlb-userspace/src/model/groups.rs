//! LB groups: which apps this mlb instance exposes (`--group`, repeatable; `*` for all).
//!
//! A service port's groups are `HAPROXY_{n}_GROUP` when set, else the app's `HAPROXY_GROUP`
//! (both comma lists). It is exposed when the instance's groups include `*` (which also matches
//! apps without any group) or share a group with it.
use std::fmt;

/// The groups of one service port: the port-level list replaces the app-level one.
pub fn port_groups<'a>(
    app_groups: &'a [String],
    port_groups: Option<&'a [String]>,
) -> &'a [String] {
    port_groups.unwrap_or(app_groups)
}

/// Whether an instance serving `lb_groups` exposes a service in `service_groups`.
pub fn group_matches(lb_groups: &[String], service_groups: &[String]) -> bool {
    lb_groups.iter().any(|g| g == "*") || lb_groups.iter().any(|g| service_groups.contains(g))
}

/// A service this instance does not expose because of its groups; its text names both sides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMismatch {
    /// `--group`.
    pub lb_groups: Vec<String>,
    /// The service port's groups.
    pub service_groups: Vec<String>,
}

/// Whether an instance serving `lb_groups` exposes a service in `service_groups`, and if not,
/// why.
pub fn check_groups(lb_groups: &[String], service_groups: &[String]) -> Result<(), GroupMismatch> {
    if group_matches(lb_groups, service_groups) {
        Ok(())
    } else {
        Err(GroupMismatch {
            lb_groups: lb_groups.to_vec(),
            service_groups: service_groups.to_vec(),
        })
    }
}

impl fmt::Display for GroupMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lb = if self.lb_groups.is_empty() {
            "none (mlb runs without --group)".to_owned()
        } else {
            self.lb_groups.join(",")
        };
        if self.service_groups.is_empty() {
            write!(
                f,
                "app has no HAPROXY_GROUP; this mlb serves --group {lb} (only --group '*' exposes apps without a group)"
            )
        } else {
            write!(
                f,
                "group mismatch: app is in group(s) {}, this mlb serves --group {lb}",
                self.service_groups.join(",")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn star_matches_everything_and_groups_must_intersect() {
        assert!(group_matches(&v(&["*"]), &v(&[])));
        assert!(group_matches(&v(&["internal", "*"]), &v(&["x"])));
        assert!(group_matches(
            &v(&["external"]),
            &v(&["internal", "external"])
        ));
        assert!(!group_matches(&v(&["external"]), &v(&["internal"])));
        assert!(!group_matches(&v(&["external"]), &v(&[])));
        assert!(!group_matches(&v(&[]), &v(&["external"])));
    }

    #[test]
    fn port_level_groups_replace_app_groups() {
        let app = v(&["external"]);
        let port = v(&["internal"]);
        assert_eq!(port_groups(&app, Some(&port)), ["internal"]);
        assert_eq!(port_groups(&app, None), ["external"]);
    }

    #[test]
    fn mismatch_names_both_sides() {
        assert_eq!(check_groups(&v(&["*"]), &[]), Ok(()));
        let r = check_groups(&v(&["external"]), &v(&["internal"])).unwrap_err();
        assert_eq!(
            r.to_string(),
            "group mismatch: app is in group(s) internal, this mlb serves --group external"
        );
        let r = check_groups(&[], &[]).unwrap_err();
        assert_eq!(
            r.to_string(),
            "app has no HAPROXY_GROUP; this mlb serves --group none (mlb runs without --group) (only --group '*' exposes apps without a group)"
        );
    }
}
