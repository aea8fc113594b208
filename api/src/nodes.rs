//! What placement decisions need to know about nodes, evaluated as
//! Kubernetes does: whether a node is Ready, which nodes a pod may run on
//! by its `nodeSelector` and required node affinity, and which nodes a
//! volume's node affinity names. Shared by the scheduler, the DaemonSet
//! controller (which places daemon pods itself) and the storage
//! controller, so all agree.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

/// Whether the node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Whether `node` satisfies the pod's `nodeSelector` (every label equal)
/// and its required node affinity (any term, terms ORed).
pub fn matches_node(spec: &PodSpec, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|r| {
        r.node_selector_terms
            .iter()
            .any(|t| term_matches(t, labels, node_name))
    });
    selector_ok && affinity_ok
}

/// A node selector term: every expression and field requirement must
/// hold; an empty term selects nothing; an invalid one matches nothing.
pub fn term_matches(
    term: &NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
    node_name: &str,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| label_requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| field_requirement_matches(r, node_name))
}

/// One `matchExpressions` requirement against the label's value (if the
/// node has the label), with Kubernetes' label selector semantics.
fn label_requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => !values.is_empty() && value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !values.is_empty() && value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => values.is_empty() && value.is_some(),
        "DoesNotExist" => values.is_empty() && value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else { return false };
            let (Ok(bound), Some(Ok(v))) = (bound.parse::<i64>(), value.map(str::parse::<i64>))
            else {
                return false;
            };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// One `matchFields` requirement: only `metadata.name` with `In` or
/// `NotIn` and exactly one value, as Kubernetes allows.
fn field_requirement_matches(r: &NodeSelectorRequirement, node_name: &str) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let [value] = values else { return false };
    if r.key != "metadata.name" {
        return false;
    }
    match r.operator.as_str() {
        "In" => value == node_name,
        "NotIn" => value != node_name,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
            .expect("a node")
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).expect("a pod spec")
    }

    #[test]
    fn selector_and_required_affinity_must_both_hold() {
        let ssd = node("a", json!({"disk": "ssd", "zone": "3"}));
        let hdd = node("b", json!({"disk": "hdd"}));
        let by_selector = spec(json!({"containers": [], "nodeSelector": {"disk": "ssd"}}));
        assert!(matches_node(&by_selector, &ssd));
        assert!(!matches_node(&by_selector, &hdd));
        let by_affinity = spec(json!({"containers": [], "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "Gt", "values": ["2"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}
        ]}}}}));
        assert!(matches_node(&by_affinity, &ssd), "the first term");
        assert!(matches_node(&by_affinity, &hdd), "the second term");
        assert!(matches_node(&spec(json!({"containers": []})), &hdd));
    }

    #[test]
    fn empty_or_invalid_terms_select_nothing() {
        let labels = BTreeMap::from([("a".to_string(), "1".to_string())]);
        assert!(!term_matches(&NodeSelectorTerm::default(), &labels, "n"));
        let term: NodeSelectorTerm = serde_json::from_value(json!({"matchFields": [
            {"key": "metadata.uid", "operator": "In", "values": ["n"]}]}))
        .expect("a term");
        assert!(!term_matches(&term, &labels, "n"));
        let term: NodeSelectorTerm = serde_json::from_value(json!({"matchExpressions": [
            {"key": "a", "operator": "In", "values": []}]}))
        .expect("a term");
        assert!(!term_matches(&term, &labels, "n"));
    }
}
