//! The alert rules and the dashboard name only metrics a running gateway really exports.

mod common;

use std::collections::BTreeSet;

use chime_gateway::pb::chime::v1::{UserType, chime_service_client::ChimeServiceClient};
use common::{
    process::{start, stderr_after_sigterm},
    request,
};
use http_body_util::BodyExt;

const RULES: &str = include_str!("../deploy/monitoring/rules.yaml");
const DASHBOARD: &str = include_str!("../deploy/monitoring/dashboard.json");

/// Every gateway metric name a text mentions (Prometheus's own `up` is not the gateway's).
fn metric_names(text: &str) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\b(?:grpc_server|chime)_[a-z_]+\b").unwrap();
    name.find_iter(text).map(|m| m.as_str().to_owned()).collect()
}

/// True when `exposition` has `name` as a sample, or as a family whose samples carry a suffix.
fn exported(exposition: &str, name: &str) -> bool {
    let family = ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    exposition.lines().any(|l| {
        l.starts_with(&format!("{name}{{"))
            || l.starts_with(&format!("{name} "))
            || l.starts_with(&format!("# TYPE {family} "))
    })
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let args = [
        "--emulate",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let gateway = start(&args, &[]).await;
    let mut client = ChimeServiceClient::connect(format!("http://{}", gateway.api))
        .await
        .unwrap();
    client
        .create_user(request(Some("monitored@example.com"), UserType::PrivateUser))
        .await
        .unwrap();
    let url = format!("http://{}/metrics", gateway.metrics);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let body = http.get(url.parse().unwrap()).await.unwrap().into_body();
    let exposition = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    stderr_after_sigterm(gateway.running).await;

    let used: BTreeSet<String> = metric_names(RULES)
        .into_iter()
        .chain(metric_names(DASHBOARD))
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported(&exposition, n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{exposition}");
}

#[test]
fn the_name_check_tells_exported_names_from_others() {
    let exposition = "# TYPE chime_gateway_replays counter\nchime_gateway_replays_total 0\n\
                      # TYPE grpc_server_handling_seconds histogram\n";
    assert!(exported(exposition, "chime_gateway_replays_total"));
    assert!(exported(exposition, "grpc_server_handling_seconds_bucket"));
    assert!(!exported(exposition, "chime_gateway_replay_total"));
    assert!(!exported(exposition, "grpc_server_handled_total"));
}
