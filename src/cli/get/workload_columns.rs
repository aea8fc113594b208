//! kubectl's columns for CronJobs, DaemonSets and StatefulSets.

use commitd_api::k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use commitd_api::k8s_openapi::api::batch::v1::CronJob;
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::meta;

use super::{containers_and_images, none_if_empty, selector_string, Columns};
use crate::cli::output::age;

/// SUSPEND as `True`/`False`, ACTIVE as the number of running Jobs, LAST
/// SCHEDULE as the age of the last scheduled run.
impl Columns for CronJob {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE",
        ];
        if wide {
            h.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let suspended = spec.and_then(|s| s.suspend).unwrap_or(false);
        let active = status.and_then(|s| s.active.as_ref()).map_or(0, Vec::len);
        let last = status
            .and_then(|s| s.last_schedule_time.as_ref())
            .map_or_else(|| "<none>".into(), |t| age(Some(t), now));
        let mut c = vec![
            meta::name(self).to_string(),
            spec.map(|s| s.schedule.clone()).unwrap_or_default(),
            none_if_empty(
                spec.and_then(|s| s.time_zone.as_deref())
                    .unwrap_or_default(),
            ),
            if suspended { "True" } else { "False" }.to_string(),
            active.to_string(),
            last,
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            let job = spec.and_then(|s| s.job_template.spec.as_ref());
            c.extend(containers_and_images(job.map(|j| &j.template)));
            c.push(
                job.and_then(|j| j.selector.as_ref())
                    .map_or_else(|| "<none>".into(), selector_string),
            );
        }
        c
    }
}

/// NODE SELECTOR is the template's `nodeSelector`, `<none>` without.
impl Columns for DaemonSet {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
            "AGE",
        ];
        if wide {
            h.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let spec = self.spec.as_ref();
        let status = self.status.clone().unwrap_or_default();
        let node_selector: Vec<String> = spec
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.node_selector.as_ref())
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut c = vec![
            meta::name(self).to_string(),
            status.desired_number_scheduled.to_string(),
            status.current_number_scheduled.to_string(),
            status.number_ready.to_string(),
            status.updated_number_scheduled.unwrap_or(0).to_string(),
            status.number_available.unwrap_or(0).to_string(),
            none_if_empty(&node_selector.join(",")),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            c.extend(containers_and_images(spec.map(|s| &s.template)));
            c.push(spec.map_or_else(|| "<none>".into(), |s| selector_string(&s.selector)));
        }
        c
    }
}

/// READY as `ready/replicas`.
impl Columns for StatefulSet {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "READY", "AGE"];
        if wide {
            h.extend(["CONTAINERS", "IMAGES"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let spec = self.spec.as_ref();
        let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
        let ready = self
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        let mut c = vec![
            meta::name(self).to_string(),
            format!("{ready}/{desired}"),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            c.extend(containers_and_images(spec.map(|s| &s.template)));
        }
        c
    }
}

/// CONTROLLER as `statefulset.apps/web`, from the controller owner.
impl Columns for ControllerRevision {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "CONTROLLER", "REVISION", "AGE"]
    }

    fn cells(&self, _wide: bool, now: Timestamp) -> Vec<String> {
        let controller = meta::controller_of(&self.metadata).map_or_else(
            || "<none>".to_string(),
            |o| {
                let group = o.api_version.split_once('/').map_or("", |(g, _)| g);
                let kind = o.kind.to_ascii_lowercase();
                match group {
                    "" => format!("{kind}/{}", o.name),
                    g => format!("{kind}.{g}/{}", o.name),
                }
            },
        );
        vec![
            meta::name(self).to_string(),
            controller,
            self.revision.to_string(),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().expect("a timestamp")
    }

    #[test]
    fn cron_jobs_show_schedule_and_last_run() {
        let cj: CronJob = serde_json::from_value(json!({
            "metadata": {"name": "backup", "creationTimestamp": "2026-11-24T10:00:00Z"},
            "spec": {"schedule": "*/5 * * * *", "timeZone": "Europe/Paris", "suspend": false,
                "jobTemplate": {"spec": {"template": {"spec": {"containers": [
                    {"name": "b", "image": "busybox"}]}}}}},
            "status": {"active": [{"name": "backup-1"}], "lastScheduleTime": "2026-11-24T11:58:00Z"}
        }))
        .expect("a CronJob");
        assert_eq!(
            cj.cells(true, now()),
            vec![
                "backup",
                "*/5 * * * *",
                "Europe/Paris",
                "False",
                "1",
                "2m",
                "120m",
                "b",
                "busybox",
                "<none>"
            ]
        );
    }

    #[test]
    fn daemon_sets_show_counts_and_node_selector() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "creationTimestamp": "2026-11-24T11:00:00Z"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"spec": {"nodeSelector": {"disk": "ssd"},
                    "containers": [{"name": "a", "image": "busybox"}]}}},
            "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                "numberReady": 1, "updatedNumberScheduled": 2, "numberAvailable": 1,
                "numberMisscheduled": 0}
        }))
        .expect("a DaemonSet");
        assert_eq!(
            ds.cells(false, now()),
            vec!["agent", "2", "2", "1", "2", "1", "disk=ssd", "60m"]
        );
    }

    #[test]
    fn stateful_sets_show_ready_of_desired() {
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-11-24T11:59:30Z"},
            "spec": {"replicas": 3, "serviceName": "web", "selector": {},
                "template": {"spec": {"containers": []}}},
            "status": {"replicas": 3, "readyReplicas": 2}
        }))
        .expect("a StatefulSet");
        assert_eq!(sts.cells(false, now()), vec!["web", "2/3", "30s"]);
    }
}
