//! Taints and tolerations, evaluated as Kubernetes does. Shared by the
//! scheduler (which places pods) and the DaemonSet controller (which
//! decides by itself which nodes get a daemon pod), so both agree on what
//! a toleration covers.

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// Kubernetes' `Toleration.ToleratesTaint`: an empty effect or key matches
/// any; `Exists` ignores the value; `Equal` (or no operator) compares it.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toleration(
        key: Option<&str>,
        op: &str,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: Some(op.into()),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn tolerations_match_as_kubernetes_matches_them() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let cases = [
            (
                toleration(Some("dedicated"), "Equal", Some("gpu"), Some("NoSchedule")),
                true,
            ),
            (toleration(Some("dedicated"), "", Some("gpu"), None), true),
            (
                toleration(Some("dedicated"), "Equal", Some("cpu"), None),
                false,
            ),
            (toleration(Some("dedicated"), "Exists", None, None), true),
            (
                toleration(Some("dedicated"), "Exists", None, Some("NoExecute")),
                false,
            ),
            (toleration(None, "Exists", None, None), true),
            (toleration(Some("other"), "Exists", None, None), false),
            (
                toleration(Some("dedicated"), "Gt", Some("gpu"), None),
                false,
            ),
        ];
        for (t, want) in cases {
            assert_eq!(tolerates(&t, &taint), want, "{t:?}");
        }
    }
}
