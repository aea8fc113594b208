//! The Endpoints controller against a real etcd: Services and pods are
//! written straight into the store (pod IPs and readiness set by hand, as
//! a node agent would report them), the controllers run, and the test
//! reads the Endpoints objects back from etcd until they say what
//! Kubernetes' endpoints controller would have written.
//!
//! No containerd, scheduler or node agent is needed. The last test reads
//! the result through `commitd get` and `commitd describe`, as a user
//! would.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use commitd_api::k8s_openapi::api::core::v1::{Endpoints, Pod, PodCondition, Service};
use commitd_api::{meta, Store};
use commitd_reconciler::controllers::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use serde_json::json;
use support::cli::Cli;

use support::etcd::{with_etcd, with_etcd_at, Controllers};
use support::wait::eventually;

const NS: &str = "demo";
const DEADLINE: Duration = Duration::from_secs(20);

/// Stores a Service as the reconciler would (defaults filled in).
async fn create_service(store: &Store, value: serde_json::Value) -> Result<Service> {
    let mut svc: Service = serde_json::from_value(value)?;
    commitd_api::defaults::service(&mut svc);
    Ok(store.create(svc).await?)
}

fn web_service() -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": NS, "labels": {"team": "a"},
                     "annotations": {"commitd.io/commit": "0123456789abcdef0123456789abcdef01234567",
                                     "commitd.io/source": "web.yaml:20"}},
        "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                           {"name": "metrics", "port": 9090, "targetPort": 9100}]}
    })
}

/// Stores a running pod with an IP, bound to a node, labelled `app`, whose
/// one container declares `ports` (name, number).
async fn create_pod(
    store: &Store,
    name: &str,
    app: &str,
    ip: &str,
    ready: bool,
    ports: &[(&str, i32)],
) -> Result<Pod> {
    let ports: Vec<_> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "containerPort": p, "protocol": "TCP"}))
        .collect();
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {"nodeName": "node-1",
                 "containers": [{"name": "c", "image": "registry.local/web:1", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))?;
    set_ready_condition(&mut pod, ready);
    Ok(store.create(pod).await?)
}

fn set_ready_condition(pod: &mut Pod, ready: bool) -> bool {
    let status = pod.status.get_or_insert_with(Default::default);
    let conditions = status.conditions.get_or_insert_with(Default::default);
    let want = if ready { "True" } else { "False" };
    if conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == want)
    {
        return false;
    }
    conditions.retain(|c| c.type_ != "Ready");
    conditions.push(PodCondition {
        type_: "Ready".into(),
        status: want.into(),
        last_transition_time: Some(meta::now()),
        ..Default::default()
    });
    true
}

/// What the node agent writes when a readiness probe flips.
async fn set_ready(store: &Store, name: &str, ready: bool) -> Result<()> {
    store
        .modify::<Pod, _>(Some(NS), name, |p| set_ready_condition(p, ready))
        .await?
        .with_context(|| format!("pod {name} vanished"))?;
    Ok(())
}

/// An Endpoints object reduced to what consumers read: per port name, the
/// ready and the not-ready `ip:port` pairs, sorted.
type View = BTreeMap<String, (Vec<String>, Vec<String>)>;

fn view(ep: &Endpoints) -> View {
    let mut out: View = BTreeMap::new();
    for s in ep.subsets.iter().flatten() {
        for p in s.ports.iter().flatten() {
            let entry = out.entry(p.name.clone().unwrap_or_default()).or_default();
            for a in s.addresses.iter().flatten() {
                entry.0.push(format!("{}:{}", a.ip, p.port));
            }
            for a in s.not_ready_addresses.iter().flatten() {
                entry.1.push(format!("{}:{}", a.ip, p.port));
            }
        }
    }
    for (ready, not_ready) in out.values_mut() {
        ready.sort();
        not_ready.sort();
    }
    out
}

fn expect(entries: &[(&str, &[&str], &[&str])]) -> View {
    entries
        .iter()
        .map(|(port, ready, not_ready)| {
            let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            (port.to_string(), (list(ready), list(not_ready)))
        })
        .collect()
}

async fn get_endpoints(store: &Store, name: &str) -> Result<Option<Endpoints>, String> {
    store
        .get::<Endpoints>(Some(NS), name)
        .await
        .map_err(|e| e.to_string())
}

/// Waits until the Endpoints `name` in etcd reads as `want`; returns them.
async fn wait_for_view(store: &Store, name: &str, want: View) -> Result<Endpoints> {
    eventually(
        &format!("endpoints {name} = {want:?}"),
        DEADLINE,
        || async {
            match get_endpoints(store, name).await? {
                Some(ep) if view(&ep) == want => Ok(ep),
                Some(ep) => Err(format!("{:?}", view(&ep))),
                None => Err("no endpoints".into()),
            }
        },
    )
    .await
}

async fn wait_for_absent(store: &Store, name: &str) -> Result<()> {
    eventually(&format!("endpoints {name} deleted"), DEADLINE, || async {
        match get_endpoints(store, name).await? {
            None => Ok(()),
            Some(ep) => Err(format!("still there: {:?}", view(&ep))),
        }
    })
    .await
}

/// A barrier: creates a Service `name` selecting pods `app: <name>` and a
/// pod for it, and waits until its Endpoints list that pod. Everything
/// written before it was in the controller's caches for the pass that did
/// so, because each cache applies its watch in etcd revision order.
async fn barrier(store: &Store, name: &str, ip: &str) -> Result<()> {
    create_service(
        store,
        json!({"metadata": {"name": name, "namespace": NS},
               "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}),
    )
    .await?;
    create_pod(store, name, name, ip, true, &[]).await?;
    wait_for_view(store, name, expect(&[("", &[&format!("{ip}:80")], &[])])).await?;
    Ok(())
}

fn rv(ep: &Endpoints) -> String {
    ep.metadata.resource_version.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_follow_services_and_pods() -> Result<()> {
    with_etcd(|store| async move {
        let ctl = Controllers::start(&store);
        let result = scenario(&store).await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}

async fn scenario(store: &Store) -> Result<()> {
    // Two ready pods behind a Service whose first port names its target.
    create_service(store, web_service()).await?;
    create_pod(
        store,
        "web-a",
        "web",
        "10.244.0.11",
        true,
        &[("http", 8080)],
    )
    .await?;
    create_pod(
        store,
        "web-b",
        "web",
        "10.244.0.12",
        true,
        &[("http", 8080)],
    )
    .await?;
    create_pod(store, "db-a", "db", "10.244.0.30", true, &[("http", 8080)]).await?;
    let ep = wait_for_view(
        store,
        "web",
        expect(&[
            ("http", &["10.244.0.11:8080", "10.244.0.12:8080"], &[]),
            ("metrics", &["10.244.0.11:9100", "10.244.0.12:9100"], &[]),
        ]),
    )
    .await?;
    let labels = ep.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some(MANAGED_BY_VALUE)
    );
    assert!(
        !meta::is_git_owned(&ep.metadata),
        "derived endpoints carry no commit"
    );
    let address = ep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .find(|a| a.ip == "10.244.0.11")
        .context("web-a's address")?;
    assert_eq!(address.node_name.as_deref(), Some("node-1"));
    let target = address.target_ref.clone().context("target ref")?;
    assert_eq!(
        (target.kind.as_deref(), target.name.as_deref()),
        (Some("Pod"), Some("web-a"))
    );
    eprintln!("two ready pods are endpoints on the resolved target port");

    // Nothing that matters changes: no write. An unrelated pod changes,
    // then a barrier proves the controller has seen it.
    let before = rv(&ep);
    set_ready(store, "db-a", false).await?;
    barrier(store, "probe-1", "10.244.0.91").await?;
    let after = get_endpoints(store, "web")
        .await
        .map_err(|e| anyhow!(e))?
        .context("web endpoints")?;
    assert_eq!(
        rv(&after),
        before,
        "unchanged inputs must not cause a write"
    );

    // A pod turning not ready moves to notReadyAddresses, and back.
    set_ready(store, "web-b", false).await?;
    wait_for_view(
        store,
        "web",
        expect(&[
            ("http", &["10.244.0.11:8080"], &["10.244.0.12:8080"]),
            ("metrics", &["10.244.0.11:9100"], &["10.244.0.12:9100"]),
        ]),
    )
    .await?;
    set_ready(store, "web-b", true).await?;
    wait_for_view(
        store,
        "web",
        expect(&[
            ("http", &["10.244.0.11:8080", "10.244.0.12:8080"], &[]),
            ("metrics", &["10.244.0.11:9100", "10.244.0.12:9100"], &[]),
        ]),
    )
    .await?;
    eprintln!("readiness moves addresses between ready and not ready");

    // A pod that declares no port named `http` serves only the numeric one.
    create_pod(store, "web-c", "web", "10.244.0.13", true, &[("web", 8080)]).await?;
    wait_for_view(
        store,
        "web",
        expect(&[
            ("http", &["10.244.0.11:8080", "10.244.0.12:8080"], &[]),
            (
                "metrics",
                &["10.244.0.11:9100", "10.244.0.12:9100", "10.244.0.13:9100"],
                &[],
            ),
        ]),
    )
    .await?;
    eprintln!("a pod without the named port is left out for that port");

    // A terminating pod leaves at once; a deleted one too.
    store
        .modify::<Pod, _>(Some(NS), "web-a", |p| {
            p.metadata.deletion_timestamp = Some(meta::now());
            p.metadata.deletion_grace_period_seconds = Some(30);
            true
        })
        .await?;
    wait_for_view(
        store,
        "web",
        expect(&[
            ("http", &["10.244.0.12:8080"], &[]),
            ("metrics", &["10.244.0.12:9100", "10.244.0.13:9100"], &[]),
        ]),
    )
    .await?;
    store.delete::<Pod>(Some(NS), "web-a", None).await?;
    store.delete::<Pod>(Some(NS), "web-c", None).await?;
    wait_for_view(
        store,
        "web",
        expect(&[
            ("http", &["10.244.0.12:8080"], &[]),
            ("metrics", &["10.244.0.12:9100"], &[]),
        ]),
    )
    .await?;
    eprintln!("terminating and deleted pods disappear");

    // The selector changes (a new commit): the Endpoints follow it, and
    // keep existing (empty) while nothing matches.
    let web_uid = after.metadata.uid.clone();
    store
        .modify::<Service, _>(Some(NS), "web", |s| {
            if let Some(spec) = s.spec.as_mut() {
                spec.selector = Some(BTreeMap::from([("app".into(), "db".into())]));
            }
            true
        })
        .await?;
    let ep = wait_for_view(
        store,
        "web",
        expect(&[
            ("http", &[], &["10.244.0.30:8080"]),
            ("metrics", &[], &["10.244.0.30:9100"]),
        ]),
    )
    .await?;
    assert_eq!(ep.metadata.uid, web_uid, "updated in place, not recreated");
    store.delete::<Pod>(Some(NS), "db-a", None).await?;
    let ep = wait_for_view(store, "web", View::new()).await?;
    assert_eq!(ep.subsets, None);
    eprintln!("a changed selector changes the endpoints");

    // The Service is deleted: so are its Endpoints.
    store.delete::<Service>(Some(NS), "web", None).await?;
    wait_for_absent(store, "web").await?;
    eprintln!("a deleted service loses its endpoints");

    // Losing the selector deletes managed Endpoints too.
    store
        .modify::<Service, _>(Some(NS), "probe-1", |s| {
            if let Some(spec) = s.spec.as_mut() {
                spec.selector = None;
            }
            true
        })
        .await?;
    wait_for_absent(store, "probe-1").await?;

    // Selector-less Services get none, and hand-made Endpoints of such a
    // Service are left alone (in Kubernetes, someone else maintains them).
    create_service(
        store,
        json!({"metadata": {"name": "external-db", "namespace": NS},
               "spec": {"ports": [{"port": 5432}]}}),
    )
    .await?;
    create_service(
        store,
        json!({"metadata": {"name": "manual", "namespace": NS},
               "spec": {"ports": [{"port": 5432}]}}),
    )
    .await?;
    create_service(
        store,
        json!({"metadata": {"name": "ext", "namespace": NS},
               "spec": {"type": "ExternalName", "externalName": "db.example.com",
                        "selector": {"app": "web"}}}),
    )
    .await?;
    let manual: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "manual", "namespace": NS},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]
    }))?;
    let manual = store.create(manual).await?;
    // Orphaned hand-made Endpoints (no Service at all) stay too.
    let orphan: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "namespace": NS},
        "subsets": [{"addresses": [{"ip": "192.0.2.11"}], "ports": [{"port": 80}]}]
    }))?;
    let orphan = store.create(orphan).await?;
    barrier(store, "probe-2", "10.244.0.92").await?;
    assert_eq!(
        get_endpoints(store, "external-db")
            .await
            .map_err(|e| anyhow!(e))?,
        None
    );
    assert_eq!(
        get_endpoints(store, "ext").await.map_err(|e| anyhow!(e))?,
        None
    );
    for kept in [&manual, &orphan] {
        let now = get_endpoints(store, meta::name(kept))
            .await
            .map_err(|e| anyhow!(e))?
            .context("hand-made endpoints kept")?;
        assert_eq!(rv(&now), rv(kept), "hand-made endpoints untouched");
    }
    eprintln!("selector-less and ExternalName services get no endpoints");
    Ok(())
}

/// Headless Services: pods that name the Service as their subdomain get a
/// hostname, and a Service without ports still lists its pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headless_services_list_pods_with_hostnames() -> Result<()> {
    with_etcd(|store| async move {
        let ctl = Controllers::start(&store);
        let result = headless_scenario(&store).await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}

async fn headless_scenario(store: &Store) -> Result<()> {
    create_service(
        store,
        json!({"metadata": {"name": "db", "namespace": NS},
               "spec": {"clusterIP": "None", "selector": {"app": "db"}}}),
    )
    .await?;
    for (i, name) in ["db-0", "db-1"].into_iter().enumerate() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": NS, "labels": {"app": "db"}},
            "spec": {"nodeName": "node-1", "hostname": name, "subdomain": "db",
                     "containers": [{"name": "c", "image": "registry.local/web:1"}]},
            "status": {"phase": "Running", "podIP": format!("10.244.1.{}", i + 1)}
        }))?;
        set_ready_condition(&mut pod, true);
        store.create(pod).await?;
    }
    let ep = eventually("headless endpoints with hostnames", DEADLINE, || async {
        let ep = get_endpoints(store, "db").await?.ok_or("no endpoints")?;
        let hosts: Vec<(String, Option<String>)> = ep
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .map(|a| (a.ip.clone(), a.hostname.clone()))
            .collect();
        let want = vec![
            ("10.244.1.1".to_string(), Some("db-0".to_string())),
            ("10.244.1.2".to_string(), Some("db-1".to_string())),
        ];
        if hosts == want {
            Ok(ep)
        } else {
            Err(format!("{hosts:?}"))
        }
    })
    .await?;
    let labels = ep.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get(controllers::HEADLESS_LABEL).map(String::as_str),
        Some("")
    );
    Ok(())
}

/// A restart of the controllers finds every Endpoints as it should be and
/// writes nothing; changes made while they were down are caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_rewrites_only_what_changed_meanwhile() -> Result<()> {
    with_etcd(|store| async move {
        let ctl = Controllers::start(&store);
        create_service(&store, web_service()).await?;
        create_pod(
            &store,
            "web-a",
            "web",
            "10.244.0.11",
            true,
            &[("http", 8080)],
        )
        .await?;
        let first = wait_for_view(
            &store,
            "web",
            expect(&[
                ("http", &["10.244.0.11:8080"], &[]),
                ("metrics", &["10.244.0.11:9100"], &[]),
            ]),
        )
        .await?;
        ctl.stop().await?;

        // While nothing runs: the Service of `gone` is deleted.
        create_service(
            &store,
            json!({"metadata": {"name": "gone", "namespace": NS},
                   "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        )
        .await?;
        let ctl = Controllers::start(&store);
        wait_for_view(&store, "gone", expect(&[("", &["10.244.0.11:80"], &[])])).await?;
        ctl.stop().await?;
        store.delete::<Service>(Some(NS), "gone", None).await?;

        let ctl = Controllers::start(&store);
        let result = async {
            wait_for_absent(&store, "gone").await?;
            barrier(&store, "probe", "10.244.0.99").await?;
            let now = get_endpoints(&store, "web")
                .await
                .map_err(|e| anyhow!(e))?
                .context("web endpoints")?;
            assert_eq!(rv(&now), rv(&first), "a restart rewrites nothing unchanged");
            anyhow::Ok(())
        }
        .await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}

/// Cells of a table line, with the AGE cell (which depends on the clock)
/// replaced by `*`; AGE is `age_from_end` cells before the last.
fn cells(line: &str, age_from_end: usize) -> Vec<String> {
    let mut cells: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    if let Some(i) = cells.len().checked_sub(age_from_end + 1) {
        cells[i] = "*".into();
    }
    cells
}

fn row(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// `commitd get services,endpoints` and `commitd describe service` read
/// what the controller wrote, the way kubectl prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_shows_services_and_endpoints() -> Result<()> {
    with_etcd_at(|store, endpoint| async move {
        let ctl = Controllers::start(&store);
        let result = cli_scenario(&store, endpoint).await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}

async fn cli_scenario(store: &Store, endpoint: String) -> Result<()> {
    let cli = Cli {
        connection: vec![OsString::from("--etcd"), OsString::from(endpoint)],
    };
    let mut web = web_service();
    web["spec"]["type"] = json!("NodePort");
    web["spec"]["clusterIPs"] = json!(["10.96.0.10"]);
    web["spec"]["ports"][0]["nodePort"] = json!(30080);
    web["spec"]["ports"][1]["nodePort"] = json!(30090);
    create_service(store, web).await?;
    create_service(
        store,
        json!({"metadata": {"name": "db", "namespace": NS},
               "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"},
                        "ports": [{"port": 5432}]}}),
    )
    .await?;
    create_service(
        store,
        json!({"metadata": {"name": "ext", "namespace": NS},
               "spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
    )
    .await?;
    for i in 1..=4 {
        let ip = format!("10.244.0.{i}");
        create_pod(
            store,
            &format!("web-{i}"),
            "web",
            &ip,
            true,
            &[("http", 8080)],
        )
        .await?;
    }
    wait_for_view(
        store,
        "web",
        expect(&[
            (
                "http",
                &[
                    "10.244.0.1:8080",
                    "10.244.0.2:8080",
                    "10.244.0.3:8080",
                    "10.244.0.4:8080",
                ],
                &[],
            ),
            (
                "metrics",
                &[
                    "10.244.0.1:9100",
                    "10.244.0.2:9100",
                    "10.244.0.3:9100",
                    "10.244.0.4:9100",
                ],
                &[],
            ),
        ]),
    )
    .await?;
    wait_for_view(store, "db", View::new()).await?;

    let (code, out, err) = cli.run(&["get", "services,endpoints", "-n", NS]).await;
    assert_eq!(code, 0, "{err}");
    eprintln!("$ commitd get services,endpoints -n {NS}\n{out}");
    let blocks: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "{out}");
    let services: Vec<Vec<String>> = blocks[0].lines().map(|l| cells(l, 0)).collect();
    assert_eq!(
        services,
        vec![
            row(&["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "*"]),
            row(&["service/db", "ClusterIP", "None", "<none>", "5432/TCP", "*"]),
            row(&[
                "service/ext",
                "ExternalName",
                "<none>",
                "db.example.com",
                "<none>",
                "*"
            ]),
            row(&[
                "service/web",
                "NodePort",
                "10.96.0.10",
                "<none>",
                "80:30080/TCP,9090:30090/TCP",
                "*"
            ]),
        ],
        "{out}"
    );
    let endpoints: Vec<Vec<String>> = blocks[1].lines().map(|l| cells(l, 0)).collect();
    assert_eq!(
        endpoints,
        vec![
            row(&["NAME", "ENDPOINTS", "*"]),
            row(&["endpoints/db", "<none>", "*"]),
            row(&[
                "endpoints/web",
                "10.244.0.1:8080,10.244.0.2:8080,10.244.0.3:8080",
                "+",
                "5",
                "more...",
                "*"
            ]),
        ],
        "{out}"
    );

    let (code, out, err) = cli
        .run(&["get", "svc", "web", "-n", NS, "-o", "wide"])
        .await;
    assert_eq!(code, 0, "{err}");
    let wide: Vec<Vec<String>> = out.lines().map(|l| cells(l, 1)).collect();
    assert_eq!(wide[1][6], "app=web", "{out}");

    let (code, out, err) = cli.run(&["describe", "svc", "web", "-n", NS]).await;
    assert_eq!(code, 0, "{err}");
    eprintln!("$ commitd describe svc web -n {NS}\n{out}");
    let field = |name: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .collect()
    };
    assert_eq!(field("Name"), vec!["web"], "{out}");
    assert_eq!(field("Type"), vec!["NodePort"], "{out}");
    assert_eq!(field("IP"), vec!["10.96.0.10"], "{out}");
    assert_eq!(
        field("Port"),
        vec!["http  80/TCP", "metrics  9090/TCP"],
        "{out}"
    );
    assert_eq!(
        field("NodePort"),
        vec!["http  30080/TCP", "metrics  30090/TCP"],
        "{out}"
    );
    assert_eq!(
        field("Endpoints"),
        vec![
            "10.244.0.1:8080,10.244.0.2:8080,10.244.0.3:8080 + 1 more...",
            "10.244.0.1:9100,10.244.0.2:9100,10.244.0.3:9100 + 1 more...",
        ],
        "{out}"
    );
    assert_eq!(field("Source"), vec!["web.yaml:20"], "{out}");
    assert_eq!(
        field("Commit"),
        vec!["0123456789abcdef0123456789abcdef01234567"],
        "{out}"
    );

    let (code, out, err) = cli.run(&["describe", "service", "missing", "-n", NS]).await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): services \"missing\" not found"
    );

    let (code, out, err) = cli.run(&["describe", "pod", "web-1", "-n", NS]).await;
    assert_eq!(code, 0, "{err}");
    eprintln!("$ commitd describe pod web-1 -n {NS}\n{out}");
    let field = |name: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.trim_start().strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .collect()
    };
    assert_eq!(field("Name"), vec!["web-1"], "{out}");
    assert_eq!(field("Node"), vec!["node-1/"], "{out}");
    assert_eq!(field("Status"), vec!["Running"], "{out}");
    assert_eq!(field("IP"), vec!["10.244.0.1", "10.244.0.1"], "{out}");
    assert_eq!(field("Image"), vec!["registry.local/web:1"], "{out}");
    assert_eq!(field("Port"), vec!["8080/TCP"], "{out}");
    assert_eq!(field("QoS Class"), vec!["BestEffort"], "{out}");
    assert_eq!(field("Events"), vec!["<none>"], "{out}");
    assert!(out.contains("\nContainers:\n  c:\n"), "{out}");

    let (code, out, err) = cli.run(&["describe", "po/missing", "-n", NS]).await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): pods \"missing\" not found"
    );
    Ok(())
}
