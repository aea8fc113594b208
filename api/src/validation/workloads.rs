//! Validation of the workload kinds built on a pod template besides
//! Deployments and Jobs: CronJob, DaemonSet and StatefulSet, with
//! Kubernetes' messages.

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::storage::claim_spec;
use super::{job_spec, object_meta, pod_spec, workload_selector, FieldErrors, Validate};
use crate::cron_schedule::{self, CronSchedule};
use crate::field_path::FieldPath;

/// The longest CronJob name: its Jobs are named `<name>-<minutes>`, with
/// room for the eleven characters the suffix takes.
const CRON_JOB_NAME_MAX: usize = 52;

impl Validate for CronJob {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        if let Some(name) = self.metadata.name.as_deref() {
            if name.len() > CRON_JOB_NAME_MAX {
                errs.invalid(
                    FieldPath::parse("metadata.name"),
                    format!("\"{name}\""),
                    "must be no more than 52 characters",
                );
            }
        }
        let sp = FieldPath::root().key("spec");
        let Some(spec) = &self.spec else {
            errs.required(sp);
            return;
        };
        if spec.schedule.is_empty() {
            errs.required(sp.key("schedule"));
        } else {
            // As Kubernetes: the parse error, then the TZ check, each an
            // error of its own.
            let quoted = format!("{:?}", spec.schedule);
            if let Err(e) = CronSchedule::parse(&spec.schedule) {
                errs.invalid(sp.key("schedule"), &quoted, &e.to_string());
            }
            if cron_schedule::names_time_zone(&spec.schedule) {
                errs.invalid(
                    sp.key("schedule"),
                    &quoted,
                    cron_schedule::TZ_IN_SCHEDULE_MESSAGE,
                );
            }
        }
        if let Some(tz) = spec.time_zone.as_deref() {
            if let Err(e) = cron_schedule::parse_time_zone(tz) {
                errs.invalid(sp.key("timeZone"), format!("{tz:?}"), &e.to_string());
            }
        }
        if let Some(policy) = spec.concurrency_policy.as_deref() {
            if !["Allow", "Forbid", "Replace"].contains(&policy) {
                errs.unsupported(
                    sp.key("concurrencyPolicy"),
                    policy,
                    &["Allow", "Forbid", "Replace"],
                );
            }
        }
        for (field, value) in [
            ("startingDeadlineSeconds", spec.starting_deadline_seconds),
            (
                "successfulJobsHistoryLimit",
                spec.successful_jobs_history_limit.map(i64::from),
            ),
            (
                "failedJobsHistoryLimit",
                spec.failed_jobs_history_limit.map(i64::from),
            ),
        ] {
            if let Some(v) = value.filter(|v| *v < 0) {
                errs.invalid(sp.key(field), v, "must be greater than or equal to 0");
            }
        }
        let jp = sp.key("jobTemplate").key("spec");
        match &spec.job_template.spec {
            Some(js) => {
                if js.manual_selector != Some(true) && js.selector.is_some() {
                    errs.forbidden(jp.key("selector"), "`selector` will be auto-generated");
                }
                job_spec(js, &jp, errs);
            }
            None => errs.required(jp),
        }
    }
}

impl Validate for DaemonSet {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        let sp = FieldPath::root().key("spec");
        let Some(spec) = &self.spec else {
            errs.required(sp);
            return;
        };
        template(Some(&spec.selector), &spec.template, "daemonset", errs);
        let up = sp.key("updateStrategy");
        let strategy = spec.update_strategy.as_ref();
        match strategy.and_then(|s| s.type_.as_deref()) {
            None | Some("OnDelete") => {}
            Some("RollingUpdate") => {
                let ru = strategy.and_then(|s| s.rolling_update.as_ref());
                let rp = up.key("rollingUpdate");
                let unavailable = ru.and_then(|r| r.max_unavailable.as_ref());
                let surge = ru.and_then(|r| r.max_surge.as_ref());
                int_or_percent(unavailable, &rp.key("maxUnavailable"), errs);
                int_or_percent(surge, &rp.key("maxSurge"), errs);
                let zero = |v: Option<&IntOrString>| match v {
                    None | Some(IntOrString::Int(0)) => true,
                    Some(IntOrString::String(s)) => s == "0%",
                    Some(IntOrString::Int(_)) => false,
                };
                if zero(unavailable) && zero(surge) {
                    errs.invalid(
                        rp.key("maxUnavailable"),
                        "0",
                        "may not be 0 when maxSurge is 0",
                    );
                }
            }
            Some(other) => errs.unsupported(up.key("type"), other, &["OnDelete", "RollingUpdate"]),
        }
    }
}

impl Validate for StatefulSet {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        let sp = FieldPath::root().key("spec");
        let Some(spec) = &self.spec else {
            errs.required(sp);
            return;
        };
        if spec.service_name.as_deref().is_none_or(str::is_empty) {
            errs.add(
                sp.key("serviceName"),
                "Required value: the governing headless Service gives each pod its DNS name",
            );
        }
        if let Some(r) = spec.replicas.filter(|r| *r < 0) {
            errs.invalid(sp.key("replicas"), r, "must be greater than or equal to 0");
        }
        if let Some(policy) = spec.pod_management_policy.as_deref() {
            if !["OrderedReady", "Parallel"].contains(&policy) {
                errs.unsupported(
                    sp.key("podManagementPolicy"),
                    policy,
                    &["OrderedReady", "Parallel"],
                );
            }
        }
        let up = sp.key("updateStrategy");
        let strategy = spec.update_strategy.as_ref();
        match strategy.and_then(|s| s.type_.as_deref()) {
            None | Some("OnDelete") => {}
            Some("RollingUpdate") => {
                let partition = strategy
                    .and_then(|s| s.rolling_update.as_ref())
                    .and_then(|r| r.partition);
                if let Some(p) = partition.filter(|p| *p < 0) {
                    errs.invalid(
                        up.key("rollingUpdate").key("partition"),
                        p,
                        "must be greater than or equal to 0",
                    );
                }
            }
            Some(other) => errs.unsupported(up.key("type"), other, &["OnDelete", "RollingUpdate"]),
        }
        let claims = spec.volume_claim_templates.as_deref().unwrap_or_default();
        for (i, claim) in claims.iter().enumerate() {
            let cp = sp.key("volumeClaimTemplates").index(i);
            match claim.metadata.name.as_deref() {
                None | Some("") => errs.required(cp.key("metadata").key("name")),
                Some(n) if !super::is_dns1123_subdomain(n) => errs.invalid(
                    cp.key("metadata").key("name"),
                    format!("\"{n}\""),
                    super::DNS1123_SUBDOMAIN_MSG,
                ),
                Some(_) => {}
            }
            match &claim.spec {
                Some(cs) => claim_spec(cs, &cp.key("spec"), errs),
                None => errs.required(cp.key("spec")),
            }
        }
        // Containers mount the claims by their template names: they are
        // volumes of every pod, as the controller will make them.
        let mut with_claims = spec.template.clone();
        if let Some(ps) = with_claims.spec.as_mut() {
            let volumes = ps.volumes.get_or_insert_with(Vec::new);
            for name in claims.iter().filter_map(|c| c.metadata.name.clone()) {
                if !volumes.iter().any(|v| v.name == name) {
                    volumes.push(Volume {
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: name.clone(),
                            read_only: None,
                        }),
                        name,
                        ..Default::default()
                    });
                }
            }
        }
        template(Some(&spec.selector), &with_claims, "statefulset", errs);
    }
}

/// A selector that matches the template's labels and a template whose pods
/// always restart, as every long-running workload needs.
fn template(
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    template: &PodTemplateSpec,
    kind: &str,
    errs: &mut FieldErrors,
) {
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    workload_selector(selector, labels, kind, errs);
    let tp = FieldPath::parse("spec.template.spec");
    match template.spec.as_ref() {
        Some(ps) => pod_spec(ps, &tp, true, errs),
        None => errs.required(tp),
    }
}

/// A count or a percentage, as `maxUnavailable` and `maxSurge` take.
fn int_or_percent(v: Option<&IntOrString>, p: &FieldPath, errs: &mut FieldErrors) {
    match v {
        None => {}
        Some(IntOrString::Int(n)) if *n < 0 => {
            errs.invalid(p.clone(), n, "must be greater than or equal to 0")
        }
        Some(IntOrString::Int(_)) => {}
        Some(IntOrString::String(s)) => {
            let percent = s.strip_suffix('%').and_then(|n| n.parse::<u32>().ok());
            match percent {
                Some(n) if n > 100 => errs.invalid(
                    p.clone(),
                    format!("\"{s}\""),
                    "must not be greater than 100%",
                ),
                Some(_) => {}
                None => errs.invalid(
                    p.clone(),
                    format!("\"{s}\""),
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                ),
            }
        }
    }
}
