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
    // One unit, so the per-agency families have samples.
    let a = w.agent("agent").await;
    let u = unit("metro-fire", "E1");
    a.record(&u, rec(muster_proto::BootId(1), 1, T0, host(10.0)))
        .await;
    w.c()
        .wait_unit(&u, "in", |v| v["seq"]["received"] == 1)
        .await;
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

    // Every status the collector counts has its own stat panel, and every
    // status a panel asks for is one the collector exposes (off, overdue
    // and lost included).
    let exposed: std::collections::BTreeSet<String> = body
        .lines()
        .filter(|l| l.starts_with("muster_units{"))
        .filter_map(|l| {
            l.split("status=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        exposed,
        ["ok", "off", "degraded", "overdue", "critical", "lost"]
            .map(String::from)
            .into(),
        "muster_units statuses"
    );
    let mut stat_panels = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let Some(rest) = expr.split("muster_units{").nth(1) else {
                continue;
            };
            if let Some(st) = rest.split("status=\"").nth(1) {
                let st = st.split('"').next().unwrap().to_owned();
                assert!(
                    exposed.contains(&st),
                    "panel {:?} asks for status {st:?}, which muster_units never has",
                    panel["title"]
                );
                if panel["type"] == "stat" {
                    stat_panels.insert(st);
                }
            }
        }
    }
    assert_eq!(stat_panels, exposed, "a stat panel per status");
    w.stop_collector().await;
}
