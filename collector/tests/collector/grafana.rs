//! The shipped Grafana dashboard (`packaging/grafana/muster-collector.json`)
//! queries only metrics the collector really exposes, with the type each
//! query assumes.

use std::collections::BTreeMap;

use crate::harness::*;

/// Metric families (name -> type) from a Prometheus text exposition.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

/// Every `muster_…` name in a PromQL expression.
fn names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("muster_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn grafana_dashboard_queries_only_real_metrics() {
    let mut w = World::start("").await;
    let body = w.c().get("/metrics", ADMIN).await.text();
    let fams = families(&body);
    assert!(fams.len() > 20, "too few metric families: {fams:?}");

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/grafana/muster-collector.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for name in names(expr) {
                let (family, suffix) = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).map(|f| (f.to_owned(), *s)))
                    .filter(|(f, _)| fams.get(f).is_some_and(|t| t == "histogram"))
                    .unwrap_or((name.clone(), ""));
                let kind = fams.get(&family).unwrap_or_else(|| {
                    panic!(
                        "panel {:?} queries {name}, which /metrics does not expose",
                        panel["title"]
                    )
                });
                // rate()/increase() need counters (or histogram buckets); a gauge needs delta().
                if expr.contains(&format!("rate({name}"))
                    || expr.contains(&format!("increase({name}"))
                {
                    assert!(
                        kind == "counter" || suffix == "_bucket",
                        "panel {:?}: rate/increase over {name}, a {kind}",
                        panel["title"]
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 25, "only {checked} metric references checked");
    w.stop_collector().await;
}
