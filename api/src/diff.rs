//! Field-level differences between two versions of an object, as JSON:
//! what `commitd plan` shows a reviewer. Pure (no I/O, no kinds), so any
//! command that compares objects words a change the same way.
//!
//! Paths read like Kubernetes' field paths (`spec.replicas`,
//! `metadata.labels[app.kubernetes.io/name]`). A list whose items all have
//! a distinct `name` (containers, init containers, volumes, env, image pull
//! secrets, named ports: the lists Kubernetes merges by name) is compared
//! item by item by that name, so inserting a container does not make every
//! later one look changed: `spec.template.spec.containers[web].image`. Any
//! other list is compared by position (`args[1]`). A diff is empty exactly
//! when the two values are equal; reordering named items is reported as an
//! order change of the list, since order matters for init containers and
//! for `env` (a variable may refer to an earlier one).
//!
//! Values that must never be shown (a Secret's `data`) are hidden with
//! [`hide_values`]: the change is kept, its values are replaced by
//! [`HIDDEN`] and it prints as `(value changed)`, `(added)` or `(removed)`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

/// What a hidden value is replaced by, in machine-readable output too.
pub const HIDDEN: &str = "(hidden)";
/// How an absent field is shown next to a present one.
pub const ABSENT: &str = "(none)";
/// The fields of a Secret that hold its values (`stringData` is merged
/// into `data` by defaulting, but a raw object may still carry it).
pub const SECRET_VALUE_FIELDS: [&str; 2] = ["data", "stringData"];

/// One step from an object to a field: a map key, a list position, or the
/// `name` of a list item in a list keyed by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// A key of a map (`spec`, `labels[app.kubernetes.io/name]`).
    Key(String),
    /// A position in a list compared by position.
    Index(usize),
    /// The item of a list keyed by name (`containers[web]`).
    Named(String),
}

/// The path from the object's root to a field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<Step>);

impl Path {
    /// This path one step further.
    pub fn join(&self, step: Step) -> Path {
        let mut p = self.clone();
        p.0.push(step);
        p
    }

    /// The first key of the path, which says which part of the object
    /// changed (`spec`, `data`, `metadata`).
    pub fn top_key(&self) -> Option<&str> {
        match self.0.first() {
            Some(Step::Key(k)) => Some(k),
            _ => None,
        }
    }
}

/// Keys printed after a dot; any other key goes in brackets, as
/// Kubernetes prints label keys such as `app.kubernetes.io/name`.
fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Step::Key(k) | Step::Named(k) => write!(f, "[{k}]")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Whether a field appeared, disappeared or took another value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Absent before.
    Added,
    /// Absent after.
    Removed,
    /// Present on both sides, with different values.
    Modified,
}

/// One field that differs. `None` is a side where the field is absent.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// Where the field is.
    pub path: Path,
    /// Its value before (`None`: absent).
    pub old: Option<Value>,
    /// Its value after (`None`: absent).
    pub new: Option<Value>,
    /// The values are secret: replaced by [`HIDDEN`] and never printed.
    pub hidden: bool,
}

impl FieldChange {
    /// Whether the field was added, removed or modified.
    pub fn kind(&self) -> ChangeKind {
        match (&self.old, &self.new) {
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), None) => ChangeKind::Removed,
            _ => ChangeKind::Modified,
        }
    }

    /// The old value as one line of text ([`ABSENT`] when there was none).
    pub fn old_text(&self) -> String {
        side_text(self.old.as_ref(), self.hidden)
    }

    /// The new value as one line of text ([`ABSENT`] when there is none).
    pub fn new_text(&self) -> String {
        side_text(self.new.as_ref(), self.hidden)
    }

    /// What happened to the field, without its path: `2 → 3`, or for a
    /// hidden value `(value changed)`, `(added)` or `(removed)`.
    pub fn summary(&self) -> String {
        if self.hidden {
            return match self.kind() {
                ChangeKind::Added => "(added)",
                ChangeKind::Removed => "(removed)",
                ChangeKind::Modified => "(value changed)",
            }
            .to_string();
        }
        format!("{} → {}", self.old_text(), self.new_text())
    }

    /// `{"path", "old", "new"}` for machine-readable output; an absent side
    /// is `null`, a hidden value is [`HIDDEN`].
    pub fn to_json(&self) -> Value {
        let side = |v: &Option<Value>| match v {
            Some(_) if self.hidden => Value::from(HIDDEN),
            Some(v) => v.clone(),
            None => Value::Null,
        };
        serde_json::json!({
            "path": self.path.to_string(),
            "old": side(&self.old),
            "new": side(&self.new),
        })
    }

    /// Replaces the values by [`HIDDEN`] so they cannot be printed by
    /// mistake later; the change itself (added, removed, modified) stays.
    pub fn hide(&mut self) {
        self.hidden = true;
        for side in [&mut self.old, &mut self.new] {
            if side.is_some() {
                *side = Some(Value::from(HIDDEN));
            }
        }
    }
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.summary())
    }
}

fn side_text(v: Option<&Value>, hidden: bool) -> String {
    match v {
        None => ABSENT.to_string(),
        Some(_) if hidden => HIDDEN.to_string(),
        Some(v) => render_value(v),
    }
}

/// A value on one line: a plain string as it is (`nginx:1.26`), any string
/// that could be misread (empty, multi-line, padded, looking like a number
/// or a marker) in JSON quotes, everything else as compact JSON.
pub fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) if plain_string(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_else(|_| other.to_string()),
    }
}

fn plain_string(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let reads_as_other =
        matches!(s, "true" | "false" | "null" | "~" | "yes" | "no") || s.parse::<f64>().is_ok();
    !reads_as_other
        && !s.chars().any(char::is_control)
        && s.trim() == s
        && !matches!(first, '"' | '\'' | '(' | '[' | '{' | '-' | '+' | '~')
        && !s.contains(" → ")
}

/// Every field that differs between `old` and `new`, in a stable order:
/// map keys sorted, named list items in the new list's order followed by
/// the removed ones. Empty exactly when `old == new`.
pub fn diff(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    diff_at(&Path::default(), old, new, &mut out);
    out
}

fn change(path: &Path, old: Option<&Value>, new: Option<&Value>) -> FieldChange {
    FieldChange {
        path: path.clone(),
        old: old.cloned(),
        new: new.cloned(),
        hidden: false,
    }
}

fn diff_at(path: &Path, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => diff_maps(path, a, b, out),
        (Value::Array(a), Value::Array(b)) => match (names(a), names(b)) {
            (Some(na), Some(nb)) => diff_named(path, a, &na, b, &nb, out),
            _ => diff_positions(path, a, b, out),
        },
        _ => out.push(change(path, Some(old), Some(new))),
    }
}

fn diff_maps(
    path: &Path,
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    out: &mut Vec<FieldChange>,
) {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let p = path.join(Step::Key(k.clone()));
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) => diff_at(&p, x, y, out),
            (x, y) => out.push(change(&p, x, y)),
        }
    }
}

fn diff_positions(path: &Path, a: &[Value], b: &[Value], out: &mut Vec<FieldChange>) {
    for i in 0..a.len().max(b.len()) {
        let p = path.join(Step::Index(i));
        match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) => diff_at(&p, x, y, out),
            (x, y) => out.push(change(&p, x, y)),
        }
    }
}

/// The `name` of every item, if each item is a map with a string `name`
/// and no two share one: then the list is compared by name.
fn names(list: &[Value]) -> Option<Vec<&str>> {
    let mut seen = HashSet::new();
    list.iter()
        .map(|item| {
            let name = item.get("name")?.as_str()?;
            seen.insert(name).then_some(name)
        })
        .collect()
}

fn diff_named(
    path: &Path,
    a: &[Value],
    na: &[&str],
    b: &[Value],
    nb: &[&str],
    out: &mut Vec<FieldChange>,
) {
    let old_by_name: BTreeMap<&str, &Value> = na.iter().copied().zip(a).collect();
    let new_names: HashSet<&str> = nb.iter().copied().collect();
    for (name, item) in nb.iter().zip(b) {
        let p = path.join(Step::Named((*name).to_string()));
        match old_by_name.get(name) {
            Some(old) => diff_at(&p, old, item, out),
            None => out.push(change(&p, None, Some(item))),
        }
    }
    for (name, item) in na.iter().zip(a) {
        if !new_names.contains(name) {
            let p = path.join(Step::Named((*name).to_string()));
            out.push(change(&p, Some(item), None));
        }
    }
    // The items both sides have, in each side's order: a difference is a
    // reordering, which the per-item comparison above cannot see.
    let kept_old: Vec<&str> = na
        .iter()
        .copied()
        .filter(|n| new_names.contains(n))
        .collect();
    let kept_new: Vec<&str> = nb
        .iter()
        .copied()
        .filter(|n| old_by_name.contains_key(n))
        .collect();
    if kept_old != kept_new {
        out.push(FieldChange {
            path: path.clone(),
            old: Some(Value::from(kept_old)),
            new: Some(Value::from(kept_new)),
            hidden: false,
        });
    }
}

/// Hides the values of every change under one of the top-level fields
/// `roots` (for a Secret: [`SECRET_VALUE_FIELDS`]). A whole map of values
/// added or removed at once is split into one change per key first, so the
/// keys (which are not secret) still show which values changed.
pub fn hide_values(changes: Vec<FieldChange>, roots: &[&str]) -> Vec<FieldChange> {
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        if !c.path.top_key().is_some_and(|k| roots.contains(&k)) {
            out.push(c);
            continue;
        }
        let is_map = |v: &Option<Value>| v.as_ref().is_none_or(Value::is_object);
        let mut parts = if c.path.0.len() == 1 && is_map(&c.old) && is_map(&c.new) {
            let empty = Value::Object(Map::new());
            let mut split = Vec::new();
            let old = c.old.as_ref().unwrap_or(&empty);
            let new = c.new.as_ref().unwrap_or(&empty);
            diff_at(&c.path, old, new, &mut split);
            // An empty map appearing or disappearing has no key to show.
            if split.is_empty() {
                split.push(c);
            }
            split
        } else {
            vec![c]
        };
        for p in &mut parts {
            p.hide();
        }
        out.extend(parts);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn lines(changes: &[FieldChange]) -> Vec<String> {
        changes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn equal_values_have_no_difference() {
        let v = json!({"spec": {"replicas": 2, "list": [1, 2], "m": {}}});
        assert!(diff(&v, &v.clone()).is_empty());
    }

    #[test]
    fn paths_follow_maps_and_positions() {
        let old = json!({"spec": {"replicas": 2, "args": ["httpd", "-f"], "gone": true},
            "metadata": {"labels": {"app.kubernetes.io/name": "web"}}});
        let new = json!({"spec": {"replicas": 3, "args": ["httpd", "-v", "-f"], "added": "x"},
            "metadata": {"labels": {"app.kubernetes.io/name": "api"}}});
        assert_eq!(
            lines(&diff(&old, &new)),
            vec![
                "metadata.labels[app.kubernetes.io/name]: web → api",
                "spec.added: (none) → x",
                "spec.args[1]: \"-f\" → \"-v\"",
                "spec.args[2]: (none) → \"-f\"",
                "spec.gone: true → (none)",
                "spec.replicas: 2 → 3",
            ]
        );
    }

    #[test]
    fn lists_of_named_items_are_keyed_by_name() {
        let old = json!({"containers": [
            {"name": "web", "image": "nginx:1.25"},
            {"name": "log", "image": "busybox:1"}]});
        // A sidecar inserted first: the others are matched by name, not
        // position, so only the real change and the new item show.
        let new = json!({"containers": [
            {"name": "proxy", "image": "envoy:1"},
            {"name": "web", "image": "nginx:1.26"},
            {"name": "log", "image": "busybox:1"}]});
        assert_eq!(
            lines(&diff(&old, &new)),
            vec![
                "containers[proxy]: (none) → {\"image\":\"envoy:1\",\"name\":\"proxy\"}",
                "containers[web].image: nginx:1.25 → nginx:1.26",
            ]
        );
        let removed = json!({"containers": [{"name": "web", "image": "nginx:1.25"}]});
        assert_eq!(
            lines(&diff(&old, &removed)),
            vec!["containers[log]: {\"image\":\"busybox:1\",\"name\":\"log\"} → (none)"]
        );
    }

    #[test]
    fn reordering_named_items_is_a_change() {
        let old = json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "$(A)"}]});
        let new = json!({"env": [{"name": "B", "value": "$(A)"}, {"name": "A", "value": "1"}]});
        assert_eq!(
            lines(&diff(&old, &new)),
            vec!["env: [\"A\",\"B\"] → [\"B\",\"A\"]"]
        );
    }

    #[test]
    fn duplicate_or_missing_names_fall_back_to_positions() {
        let old = json!([{"name": "a", "v": 1}, {"name": "a", "v": 2}]);
        let new = json!([{"name": "a", "v": 1}, {"name": "a", "v": 3}]);
        assert_eq!(lines(&diff(&old, &new)), vec!["[1].v: 2 → 3"]);
        let old = json!([{"port": 80}]);
        let new = json!([{"port": 8080}]);
        assert_eq!(lines(&diff(&old, &new)), vec!["[0].port: 80 → 8080"]);
    }

    #[test]
    fn values_that_could_be_misread_are_quoted() {
        assert_eq!(render_value(&json!("nginx:1.26")), "nginx:1.26");
        assert_eq!(render_value(&json!("2")), "\"2\"");
        assert_eq!(render_value(&json!("true")), "\"true\"");
        assert_eq!(render_value(&json!("")), "\"\"");
        assert_eq!(render_value(&json!("a\nb\n")), "\"a\\nb\\n\"");
        assert_eq!(render_value(&json!("(none)")), "\"(none)\"");
        assert_eq!(render_value(&json!(" padded")), "\" padded\"");
        assert_eq!(render_value(&json!(2)), "2");
        assert_eq!(render_value(&json!({"a": [1]})), "{\"a\":[1]}");
    }

    #[test]
    fn secret_values_are_hidden_but_keys_show() {
        let old =
            json!({"data": {"password": "aHVudGVyMg==", "user": "YWRtaW4="}, "type": "Opaque"});
        let new = json!({"data": {"password": "c2VjcmV0", "token": "dG9rZW4="}, "type": "Opaque"});
        let changes = hide_values(diff(&old, &new), &SECRET_VALUE_FIELDS);
        assert_eq!(
            lines(&changes),
            vec![
                "data.password: (value changed)",
                "data.token: (added)",
                "data.user: (removed)",
            ]
        );
        let printed = format!(
            "{changes:?} {}",
            changes
                .iter()
                .map(|c| c.to_json().to_string())
                .collect::<String>()
        );
        for secret in ["aHVudGVyMg==", "YWRtaW4=", "c2VjcmV0", "dG9rZW4="] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert_eq!(
            changes[1].to_json(),
            json!({"path": "data.token", "old": null, "new": HIDDEN})
        );
    }

    #[test]
    fn a_whole_secret_map_added_is_split_into_keys() {
        let old = json!({"type": "Opaque"});
        let new = json!({"type": "Opaque", "data": {"a": "eA==", "b": "eQ=="}});
        let changes = hide_values(diff(&old, &new), &SECRET_VALUE_FIELDS);
        assert_eq!(lines(&changes), vec!["data.a: (added)", "data.b: (added)"]);
        // Fields outside the roots keep their values.
        let changes = hide_values(
            diff(
                &json!({"type": "Opaque"}),
                &json!({"type": "kubernetes.io/tls"}),
            ),
            &SECRET_VALUE_FIELDS,
        );
        assert_eq!(lines(&changes), vec!["type: Opaque → kubernetes.io/tls"]);
    }

    /// Small JSON values, with lists of named maps often enough that the
    /// keyed comparison is exercised.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..4).prop_map(Value::from),
            "[ab]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[abn]", inner.clone(), 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                prop::collection::vec(("[xyz]", inner), 0..4).prop_map(|items| {
                    Value::from(
                        items
                            .into_iter()
                            .map(|(name, v)| json!({"name": name, "v": v}))
                            .collect::<Vec<_>>(),
                    )
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn a_diff_is_empty_exactly_when_equal(a in json_value(), b in json_value()) {
            prop_assert_eq!(diff(&a, &b).is_empty(), a == b);
            prop_assert!(diff(&a, &a).is_empty());
        }

        #[test]
        fn every_path_is_reported_once(a in json_value(), b in json_value()) {
            let changes = diff(&a, &b);
            let paths: HashSet<String> = changes.iter().map(|c| c.path.to_string()).collect();
            prop_assert_eq!(paths.len(), changes.len());
        }
    }
}
