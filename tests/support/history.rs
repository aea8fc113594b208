//! Reading the reconciler's history records, as the tests check them.

use std::time::Duration;

use commitd_api::keys;
use commitd_api::records::HistoryRecord;
use commitd_api::Store;

use super::wait::until;

/// Every history record, oldest first.
pub async fn records(store: &Store) -> Vec<HistoryRecord> {
    let list = store
        .list_prefix(keys::HISTORY_PREFIX)
        .await
        .expect("list history");
    list.items
        .iter()
        .map(|kv| serde_json::from_slice(kv.value()).expect("history record decodes"))
        .collect()
}

/// Waits for the newest history record of a commit.
pub async fn wait_for_record(store: &Store, sha: &str, timeout: Duration) -> HistoryRecord {
    until("a history record of the commit", timeout, || async {
        let h = records(store).await;
        h.iter()
            .rev()
            .find(|r| r.commit.sha == sha)
            .cloned()
            .ok_or_else(|| format!("{} records, none for {sha}", h.len()))
    })
    .await
}
