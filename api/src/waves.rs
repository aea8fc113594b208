//! Sync waves, as Argo CD has them: an object's `commitd.io/sync-wave`
//! annotation (Argo CD's `argocd.argoproj.io/sync-wave` is read as a
//! synonym) puts it in a wave, an integer, 0 without one. A commit whose
//! objects are in several waves is applied a wave at a time, lowest first,
//! each once the previous one is healthy; objects of later waves keep what
//! they were until their wave comes.

use serde_json::Value;

use crate::manifest::Manifest;

/// commitd's sync-wave annotation.
pub const SYNC_WAVE_ANNOTATION: &str = "commitd.io/sync-wave";
/// Argo CD's, read as a synonym when commitd's is absent.
pub const ARGO_SYNC_WAVE_ANNOTATION: &str = "argocd.argoproj.io/sync-wave";

/// The annotation that sets an object's wave, and its value, if any.
pub fn wave_annotation(obj: &Value) -> Option<(&'static str, &str)> {
    let annotations = obj.pointer("/metadata/annotations")?;
    [SYNC_WAVE_ANNOTATION, ARGO_SYNC_WAVE_ANNOTATION]
        .into_iter()
        .find_map(|key| Some((key, annotations.get(key)?.as_str()?)))
}

/// An annotation value read as a wave, as Argo CD reads it (surrounding
/// spaces allowed).
pub fn parse_wave(value: &str) -> Result<i64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not an integer"))
}

/// The wave of an object: 0 without an annotation (or with one that
/// validation rejects).
pub fn wave_of(obj: &Value) -> i64 {
    wave_annotation(obj)
        .and_then(|(_, v)| parse_wave(v).ok())
        .unwrap_or(0)
}

/// The distinct waves of `manifests`, lowest first.
pub fn waves(manifests: &[Manifest]) -> Vec<i64> {
    let mut waves: Vec<i64> = manifests.iter().map(|m| wave_of(&m.object)).collect();
    waves.sort_unstable();
    waves.dedup();
    waves
}

/// What to apply next of a commit whose objects are in `waves`, when
/// `done` is the wave it was applied through (`None`: not applied yet):
/// `Some(None)` the whole commit (one wave, or the last one), `Some(Some(w))`
/// the objects through wave `w`, `None` nothing (it is complete).
pub fn next_stage(waves: &[i64], done: Option<i64>) -> Option<Option<i64>> {
    let next = match done {
        None => waves.first().copied(),
        Some(d) => waves.iter().copied().find(|w| *w > d),
    };
    match next {
        _ if waves.len() <= 1 && done.is_none() => Some(None),
        None => None,
        Some(w) if Some(&w) == waves.last() => Some(None),
        Some(w) => Some(Some(w)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn waves_come_from_either_annotation() {
        let ours = json!({"metadata": {"annotations": {"commitd.io/sync-wave": "-1"}}});
        let argo = json!({"metadata": {"annotations": {"argocd.argoproj.io/sync-wave": " 2 "}}});
        let both = json!({"metadata": {"annotations": {
            "commitd.io/sync-wave": "3", "argocd.argoproj.io/sync-wave": "9"}}});
        assert_eq!(wave_of(&ours), -1);
        assert_eq!(wave_of(&argo), 2);
        assert_eq!(wave_of(&both), 3, "commitd's wins");
        assert_eq!(wave_of(&json!({"metadata": {}})), 0);
        assert!(parse_wave("one").is_err());
    }

    #[test]
    fn stages_go_a_wave_at_a_time_the_last_one_whole() {
        assert_eq!(next_stage(&[0], None), Some(None));
        assert_eq!(next_stage(&[], None), Some(None));
        let waves = [-1, 0, 5];
        assert_eq!(next_stage(&waves, None), Some(Some(-1)));
        assert_eq!(next_stage(&waves, Some(-1)), Some(Some(0)));
        assert_eq!(next_stage(&waves, Some(0)), Some(None));
        assert_eq!(next_stage(&waves, Some(5)), None);
    }
}
