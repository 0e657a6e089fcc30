//! Runbooks (issue 17): served as pages and as Markdown, a site's runbooks
//! over the built-in ones, a site's markup shown as text, flags linking to
//! the runbook of their rule, and `check-config`'s warnings from the built
//! binary.

use std::path::Path;
use std::process::Command;

use muster_proto::BootId;
use muster_testkit::TempDir;
use muster_testkit::http;
use serde_json::json;

use crate::harness::*;

/// A site's `incident.md`: a real override, with markup that must stay text.
const HOSTILE_INCIDENT: &str = "# incident at Metro dispatch\n\n\
Call the CAD desk on [555 0100](tel:+15550100) and read the [status page](https://status.example.org/cad).\n\n\
<script>window.__pwned = 1</script>\n\n\
Inline <img src=x onerror=\"window.__pwned = 2\"> and [a trap](javascript:window.__pwned=3).\n";

const RULES: &str = r#"
[[rules.threshold]]
name = "cad-cpu"
field = "cpu.total"
op = ">"
threshold = 50
severity = "degraded"

[[rules.threshold]]
name = "no-book"
field = "cpu.total"
op = ">"
threshold = 60
severity = "degraded"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbooks_are_served_escaped_and_a_sites_own_override_or_add() {
    let site = TempDir::new().unwrap();
    std::fs::write(site.path().join("incident.md"), HOSTILE_INCIDENT).unwrap();
    std::fs::write(
        site.path().join("cad-cpu.md"),
        "# cad-cpu: the CAD host is busy\n\nRestart the map layer.\n",
    )
    .unwrap();
    let extra = format!(
        "[runbooks]\ndir = {:?}\n{RULES}",
        site.path().display().to_string()
    );
    let w = World::start(&extra).await;
    let c = w.c();

    // A built-in runbook as a page: no token, the dashboard's headers, the
    // rendered Markdown in its article.
    let r = http::get(c.addr, "/runbooks/lost.will", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let page = r.text();
    assert!(
        page.contains(r#"<article class="panel runbook" id="runbook" data-rule="lost.will" data-source="builtin">"#),
        "{page}"
    );
    assert!(page.contains("<h2>Confirm it</h2>"), "{page}");
    assert!(page.contains("<code>latest.host.data.network.signal_dbm</code>"));
    assert!(!page.contains("<script"), "no script on a runbook page");

    // The site's override: its markup is text, its unsafe link goes nowhere,
    // its safe ones stay.
    let r = http::get(c.addr, "/runbooks/incident", None).await;
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(
        page.contains(r#"data-rule="incident" data-source="site""#),
        "{page}"
    );
    assert!(
        page.contains("<h1>incident at Metro dispatch</h1>"),
        "{page}"
    );
    for bad in ["<script", "<img", "javascript:"] {
        assert!(!page.contains(bad), "{bad} reached the page:\n{page}");
    }
    assert!(page.contains("&lt;script&gt;window.__pwned = 1&lt;/script&gt;"));
    assert!(
        page.contains("&lt;img src=x onerror=\"window.__pwned = 2\"&gt;"),
        "{page}"
    );
    assert!(page.contains(r##"<a href="#">a trap</a>"##), "{page}");
    assert!(page.contains(r#"<a href="tel:+15550100">555 0100</a>"#));
    assert!(page.contains(r#"<a href="https://status.example.org/cad">status page</a>"#));

    // The index lists every runbook with its source.
    let r = http::get(c.addr, "/runbooks", None).await;
    assert_eq!(r.status, 200);
    let index = r.text();
    for rule in muster_collector::runbooks::builtin_names().chain(["cad-cpu"]) {
        assert!(
            index.contains(&format!(r#"<a href="/runbooks/{rule}">"#)),
            "{rule} not in the index"
        );
    }

    // As Markdown, for any token; 401 without one.
    let list = c.json("/api/v1/runbooks", POLICE).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        muster_collector::runbooks::BUILTIN.len() + 1,
        "{list:#}"
    );
    let source = |rule: &str| {
        items
            .iter()
            .find(|i| i["rule"] == rule)
            .map(|i| i["source"].clone())
    };
    assert_eq!(source("incident"), Some(json!("site")));
    assert_eq!(source("cad-cpu"), Some(json!("site")));
    assert_eq!(source("lost.stale"), Some(json!("builtin")));
    assert_eq!(source("no-book"), None);
    let one = c.json("/api/v1/runbooks/incident", FIRE).await;
    assert_eq!(
        one,
        json!({
            "rule": "incident",
            "source": "site",
            "title": "incident at Metro dispatch",
            "markdown": HOSTILE_INCIDENT,
            "action": null,
        })
    );
    // The CAD client's runbook suggests restarting it (its front matter),
    // which is neither in its Markdown nor on its page.
    let cad = c.json("/api/v1/runbooks/cad-client-down", FIRE).await;
    assert_eq!(cad["action"], "restart-cad-client", "{cad}");
    let md = cad["markdown"].as_str().unwrap();
    assert!(md.starts_with("# `cad-client-down`"), "{md}");
    let page = http::get(c.addr, "/runbooks/cad-client-down", None).await;
    assert!(!page.text().contains("action: restart"), "{}", page.text());
    assert_eq!(
        http::get(c.addr, "/api/v1/runbooks/incident", None)
            .await
            .status,
        401
    );
    // Unknown rules: 404 in the one error shape, page or API.
    for (path, token) in [
        ("/runbooks/no-book", None),
        ("/runbooks/", None),
        ("/api/v1/runbooks/no-book", Some(FIRE)),
        ("/api/v1/runbooks/..", Some(FIRE)),
    ] {
        let r = http::get(c.addr, path, token).await;
        assert_eq!(r.status, 404, "GET {path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "not_found", "GET {path}");
    }

    // Flags link to their rule's runbook page when the rule names no URL,
    // and to nothing when there is none.
    let a = w.agent("agent").await;
    let e1 = unit("metro-fire", "E1");
    a.record(&e1, rec(BootId(7), 1, T0, host(97.0))).await;
    let v = c
        .wait_unit(&e1, "both flags", |v| {
            v["reasons"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await;
    let links: Vec<(String, serde_json::Value)> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rule"].as_str().unwrap().to_owned(), r["runbook"].clone()))
        .collect();
    assert_eq!(
        links,
        [
            ("cad-cpu".to_owned(), json!("/runbooks/cad-cpu")),
            ("no-book".to_owned(), json!(null)),
        ]
    );
    let r = http::get(c.addr, "/runbooks/cad-cpu", None).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Restart the map layer."));
}

/// `muster-collector check-config --config <file>`: status, stdout, stderr.
fn check_config(config: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_muster-collector"))
        .args(["check-config", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_warns_about_rules_with_no_runbook_and_fails_on_a_bad_one() {
    let dir = TempDir::new().unwrap();
    let site = dir.path().join("runbooks");
    std::fs::create_dir(&site).unwrap();
    let config = dir.path().join("collector.toml");
    let base = format!(
        "[store]\npath = {:?}\n\n[rules]\ndisabled = [\"swap-high\"]\n\n\
         [[rules.threshold]]\nname = \"wwan-errors\"\nfield = 'net[\"wwan0\"].rx_errors'\nop = \">\"\nthreshold = 100\n\n\
         [[rules.threshold]]\nname = \"cad-slow\"\nfield = 'probe[\"cad-api\"].total_ms'\nop = \">\"\nthreshold = 1500\n\
         runbook = \"https://wiki.example.org/cad-slow\"\n\n\
         [[rules.threshold]]\nname = \"cad-mem\"\nfield = 'process[\"cadclient\"].rss_mib'\nop = \">\"\nthreshold = 1500\n",
        dir.path().join("store").display().to_string()
    );
    let shown = config.display().to_string();

    // Two rules with neither a runbook nor a URL: a warning each, on
    // stderr; the config is still fine (exit 0, "ok").
    std::fs::write(&config, &base).unwrap();
    let (code, out, err) = check_config(&config);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{shown}: ok\n"));
    let warnings: Vec<&str> = err.lines().collect();
    assert_eq!(warnings.len(), 2, "{err}");
    for (line, rule) in warnings.iter().zip(["wwan-errors", "cad-mem"]) {
        assert!(
            line.starts_with(&format!(
                "{shown}: warning: rule \"{rule}\" has no runbook: "
            )) && line.contains(&format!("add {rule}.md to [runbooks] dir (not set)")),
            "{line}"
        );
    }

    // A site runbook for one of them: only the other is warned about, and
    // the message names the directory to put it in.
    std::fs::write(
        site.join("cad-mem.md"),
        "# cad-mem\n\nRestart the CAD client.\n",
    )
    .unwrap();
    let with_dir = format!(
        "[runbooks]\ndir = {:?}\n\n{base}",
        site.display().to_string()
    );
    std::fs::write(&config, &with_dir).unwrap();
    let (code, _, err) = check_config(&config);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("rule \"wwan-errors\" has no runbook")
            && err.contains(&format!("add wwan-errors.md to {}", site.display())),
        "{err}"
    );
    std::fs::write(site.join("wwan-errors.md"), "# wwan-errors\n").unwrap();
    let (code, _, err) = check_config(&config);
    assert_eq!((code, err.as_str()), (0, ""), "every rule has a runbook");

    // Front matter (issue 17): `action` is read; anything else is a
    // warning naming the file, and the config is still fine.
    std::fs::write(
        site.join("wwan-errors.md"),
        "---\naction: reset-modem\nowner: radio desk\n---\n# wwan-errors\n",
    )
    .unwrap();
    let (code, _, err) = check_config(&config);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        format!(
            "{shown}: warning: {}: front matter line 3: unknown key \"owner\" (only `action` is read)\n",
            site.join("wwan-errors.md").display()
        )
    );
    std::fs::write(
        site.join("wwan-errors.md"),
        "---\naction: reset-modem\n---\n# wwan-errors\n",
    )
    .unwrap();
    let (code, _, err) = check_config(&config);
    assert_eq!((code, err.as_str()), (0, ""), "`action` alone is fine");

    // A site runbook that is not UTF-8, or too large: refused, naming the
    // key and the file.
    std::fs::write(site.join("wwan-errors.md"), b"# r\xe9seau\n").unwrap();
    let (code, out, err) = check_config(&config);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err,
        format!(
            "{shown}: runbooks.dir: {}: is not UTF-8 (invalid byte at offset 3)\n",
            site.join("wwan-errors.md").display()
        )
    );
    std::fs::write(site.join("wwan-errors.md"), vec![b'#'; 64 * 1024 + 1]).unwrap();
    let (code, _, err) = check_config(&config);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "runbooks.dir: {}: 65537 bytes, more than the 65536 a runbook may have",
            site.join("wwan-errors.md").display()
        )),
        "{err}"
    );

    // The shipped configs: every rule they run has a runbook.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for shipped in [
        "collector/config/collector.toml",
        "packaging/deb/collector/collector.toml",
    ] {
        let (code, out, err) = check_config(&root.join(shipped));
        assert_eq!(code, 0, "{shipped}: {err}");
        assert!(out.ends_with(": ok\n"), "{shipped}: {out}");
        assert_eq!(err, "", "{shipped}: no warnings");
    }
}
