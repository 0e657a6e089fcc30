//! Packet limits agree end to end: every broker config Muster ships or
//! documents refuses, at the broker, any packet larger than the collector's
//! own MQTT client takes. A packet the broker accepted (and PUBACKed) but
//! could not hand to the collector would be dropped on the way, uncounted.

use std::path::Path;

use muster_collector::ingest::mqtt::MAX_PACKET_BYTES;

fn max_packet_size(conf: &str) -> u64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(conf);
    let text = std::fs::read_to_string(&path).unwrap();
    let values: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("max_packet_size "))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(values.len(), 1, "{}: one max_packet_size", path.display());
    values[0]
}

#[test]
fn shipped_mosquitto_configs_refuse_what_the_collector_cannot_take() {
    for conf in [
        "config/mosquitto.conf",
        "../packaging/mosquitto/mosquitto.conf",
    ] {
        let broker = max_packet_size(conf);
        // A full Muster message fits, with room for the fixed header,
        // remaining length and topic...
        assert!(
            broker >= muster_proto::MAX_MESSAGE_BYTES as u64 + 512,
            "{conf}: max_packet_size {broker} is below a full message"
        );
        // ...and what the broker forwards (re-encoded for MQTT 5, a few
        // bytes more) is within the collector's own limit.
        assert!(
            broker + 64 <= u64::from(MAX_PACKET_BYTES),
            "{conf}: max_packet_size {broker} is not below the collector's {MAX_PACKET_BYTES}"
        );
    }
}
