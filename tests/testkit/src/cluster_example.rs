//! The shipped cluster example (`packaging/cluster/`), re-addressed for a
//! test or bench: the end-to-end cluster tests and the fleet bench's
//! `--cluster` both run these very files, with only addresses, secrets and
//! paths replaced.

use std::path::{Path, PathBuf};

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/cluster")
        .join(file)
}

/// The `mappings` block of `packaging/cluster/nats-server.conf`, for
/// [`crate::NatsCluster::start_with`].
pub fn nats_mappings() -> String {
    let text =
        std::fs::read_to_string(packaging("nats-server.conf")).expect("read nats-server.conf");
    let at = text
        .find("mappings = {")
        .expect("packaging/cluster/nats-server.conf has a mappings block");
    text[at..].to_owned()
}

/// `packaging/cluster/collector.toml` for collector `id`: its admin token,
/// the feed on `127.0.0.1:0`, the suite's signing key written into
/// `dir/keys`, `store.path` in `dir`, and `[cluster]`'s `id`, `nats` (the
/// nodes' client URLs), `mqtt` (their MQTT listeners, when shipped) and
/// `postgres` replaced; everything else as shipped. Callers change more
/// keys in the table (agencies, webhooks, rules) before rendering it with
/// `toml::to_string`.
pub fn collector_toml(
    id: &str,
    admin_token: &str,
    nats: &crate::NatsCluster,
    postgres: &str,
    dir: &Path,
) -> toml::Table {
    let text = std::fs::read_to_string(packaging("collector.toml")).expect("read collector.toml");
    let mut t: toml::Table = toml::from_str(&text).expect("the shipped example parses");
    t.insert("admin_token".into(), admin_token.into());
    t["http"]
        .as_table_mut()
        .expect("[http]")
        .insert("listen".into(), "127.0.0.1:0".into());
    let key = crate::write_test_collector_key(&dir.join("keys"));
    t["signing"]
        .as_table_mut()
        .expect("[signing]")
        .insert("key_file".into(), key.display().to_string().into());
    t.entry("store")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .expect("[store]")
        .insert(
            "path".into(),
            dir.join("store").display().to_string().into(),
        );
    let c = t["cluster"].as_table_mut().expect("[cluster]");
    c.insert("id".into(), id.into());
    let nodes = nats.nodes();
    c.insert(
        "nats".into(),
        toml::Value::Array((0..nodes).map(|i| nats.nats_url(i).into()).collect()),
    );
    if c.contains_key("mqtt") {
        c.insert(
            "mqtt".into(),
            toml::Value::Array((0..nodes).map(|i| nats.mqtt_url(i).into()).collect()),
        );
    }
    c.insert("postgres".into(), postgres.into());
    t
}

/// `[cluster] partitions` of the shipped example.
pub fn partitions() -> u32 {
    let text = std::fs::read_to_string(packaging("collector.toml")).expect("read collector.toml");
    let t: toml::Table = toml::from_str(&text).expect("the shipped example parses");
    t["cluster"]["partitions"]
        .as_integer()
        .expect("cluster.partitions") as u32
}
