//! The gate between sync waves: a commit applied through a wave goes on to
//! the next only once every object of that wave is healthy, as Argo CD
//! judges health (`commitd_api::health`). Kinds without a notion of health
//! count once they exist.

use anyhow::Context;
use commitd_api::health::{self, Health, HealthStatus};
use commitd_api::k8s_openapi::api::apps::v1::Deployment;
use commitd_api::k8s_openapi::api::core::v1::Pod;
use commitd_api::manifest::Manifest;
use commitd_api::waves::wave_of;
use commitd_api::{Kind, Store};

/// Why wave `wave` of `manifests` is not healthy yet (the first object
/// that is not), or `None` when it is.
pub async fn unhealthy(
    store: &Store,
    manifests: &[Manifest],
    wave: i64,
) -> anyhow::Result<Option<String>> {
    for m in manifests.iter().filter(|m| wave_of(&m.object) == wave) {
        let ns = m.namespace.as_deref();
        let health = match m.kind {
            Kind::Deployment => store
                .get::<Deployment>(ns, &m.name)
                .await
                .with_context(|| format!("reading {}", m.display_name()))?
                .map(|d| health::deployment(&d)),
            Kind::Pod => store
                .get::<Pod>(ns, &m.name)
                .await
                .with_context(|| format!("reading {}", m.display_name()))?
                .map(|p| health::pod(&p)),
            // Written with the wave, in the same transaction.
            _ => continue,
        };
        let why = match health {
            None => format!("{} is missing", m.display_name()),
            Some(Health {
                status: HealthStatus::Healthy,
                ..
            }) => continue,
            Some(h) => format!(
                "{} is {}{}",
                m.display_name(),
                h.status,
                h.message.map(|m| format!(": {m}")).unwrap_or_default()
            ),
        };
        return Ok(Some(why));
    }
    Ok(None)
}
