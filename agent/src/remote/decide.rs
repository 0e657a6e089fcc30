//! The pure checks: is a document authentic, for this unit, newer; and
//! what effective configuration do the documents make. No I/O, no clock.

use muster_proto::{
    ConfigDoc, DocRef, DocScope, DocScopeKind, RefusalReason, TrustedKeys, UnitId, VerifyError,
    decode_config, sign,
};

use crate::config::Config;

/// A refused document: the counted reason and a sentence for the log and
/// the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Refused {
    pub reason: RefusalReason,
    pub detail: String,
}

fn refused(reason: RefusalReason, detail: impl Into<String>) -> Refused {
    Refused {
        reason,
        detail: detail.into(),
    }
}

/// A document's reference (version, hash).
pub fn doc_ref(d: &ConfigDoc) -> DocRef {
    DocRef {
        version: d.version,
        hash: sign::config_hash(d),
    }
}

/// Checks a document received on `kind`'s topic. `Ok(None)`: the document
/// already seen for that scope (a retained redelivery): nothing to do.
pub fn check(
    bytes: &[u8],
    kind: DocScopeKind,
    me: &UnitId,
    trusted: &TrustedKeys,
    seen: Option<DocRef>,
) -> Result<Option<ConfigDoc>, Refused> {
    let d = decode_config(bytes).map_err(|e| refused(RefusalReason::Malformed, e.to_string()))?;
    sign::verify_config(trusted, &d).map_err(|e| {
        let reason = match e {
            VerifyError::Unsigned => RefusalReason::Unsigned,
            VerifyError::UnknownKey(_) => RefusalReason::UntrustedKey,
            VerifyError::BadSignature(_) => RefusalReason::BadSignature,
        };
        refused(reason, e.to_string())
    })?;
    match (kind, &d.scope) {
        (DocScopeKind::Unit, DocScope::Unit { unit }) if unit == me => {}
        (DocScopeKind::Unit, other) => {
            return Err(refused(
                RefusalReason::WrongUnit,
                format!("on {me}'s topic, a document for {}", describe(other)),
            ));
        }
        (DocScopeKind::Agency, DocScope::Agency { agency }) if *agency == me.agency => {}
        (DocScopeKind::Agency, other) => {
            return Err(refused(
                RefusalReason::WrongAgency,
                format!(
                    "on agency {}'s topic, a document for {}",
                    me.agency,
                    describe(other)
                ),
            ));
        }
    }
    if let Some(s) = seen {
        let r = doc_ref(&d);
        if r == s {
            return Ok(None);
        }
        if d.version <= s.version {
            return Err(refused(
                RefusalReason::OldVersion,
                format!(
                    "version {} is not newer than version {} already seen",
                    d.version, s.version
                ),
            ));
        }
    }
    Ok(Some(d))
}

fn describe(s: &DocScope) -> String {
    match s {
        DocScope::Agency { agency } => format!("agency {agency}"),
        DocScope::Unit { unit } => format!("unit {unit}"),
    }
}

/// The effective configuration the documents make: its canonical TOML,
/// SHA-256 and validated [`Config`].
#[derive(Debug, Clone)]
pub struct Effective {
    pub text: String,
    pub hash: [u8; 32],
    pub config: Config,
}

/// The local TOML with the agency's sections, then the unit's, each
/// replacing a whole top-level section; validated like `check-config`.
/// A document setting a section `allow` does not name is refused whole.
pub fn merge(
    local: &Config,
    agency: Option<&ConfigDoc>,
    unit: Option<&ConfigDoc>,
) -> Result<Effective, Refused> {
    let mut table: toml::Table = local
        .local
        .parse()
        .map_err(|e| refused(RefusalReason::Invalid, format!("local config: {e}")))?;
    for d in [agency, unit].into_iter().flatten() {
        let body: toml::Table = d.body.parse().map_err(|e: toml::de::Error| {
            refused(
                RefusalReason::Malformed,
                format!("version {}: not TOML: {}", d.version, e.message()),
            )
        })?;
        for (section, value) in body {
            if !local.remote.allow.contains(&section) {
                return Err(refused(
                    RefusalReason::SectionNotAllowed,
                    format!(
                        "version {} sets [{section}], which remote.allow does not name",
                        d.version
                    ),
                ));
            }
            table.insert(section, value);
        }
    }
    let text = toml::to_string(&table)
        .map_err(|e| refused(RefusalReason::Invalid, format!("cannot write TOML: {e}")))?;
    let config = Config::parse_merged(&text, local.local.clone())
        .map_err(|e| refused(RefusalReason::Invalid, e.to_string()))?;
    let hash = sha256(text.as_bytes());
    Ok(Effective { text, hash, config })
}

/// SHA-256 of `b`.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::{SigningKey, encode_config};

    const LOCAL: &str = r#"
agency = "metro-pd"
unit_id = "car-12"
data_dir = "/tmp/muster-remote-test"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[trust]
collector_keys = ["ed25519:0000000000000000000000000000000000000000000000000000000000000000"]
[remote]
allow = ["probe", "sampling"]
[sampling]
interval = "5s"
"#;

    fn key() -> SigningKey {
        SigningKey::from_seed(&[7; 32])
    }

    fn local() -> Config {
        let text = LOCAL.replace(
            "ed25519:0000000000000000000000000000000000000000000000000000000000000000",
            &key().public_key().to_string(),
        );
        Config::parse(&text).unwrap()
    }

    fn me() -> UnitId {
        UnitId::new("metro-pd", "car-12").unwrap()
    }

    fn trusted() -> TrustedKeys {
        let mut t = TrustedKeys::new();
        t.insert(key().public_key()).unwrap();
        t
    }

    fn unit_doc(version: u64, body: &str) -> ConfigDoc {
        sign::sign_config(
            &key(),
            DocScope::Unit { unit: me() },
            version,
            1,
            body.into(),
        )
    }

    #[test]
    fn check_refuses_each_bad_document_with_its_reason() {
        let good = unit_doc(3, "[sampling]\ninterval = \"10s\"\n");
        let agency = |a: &str, k: &SigningKey| {
            sign::sign_config(
                k,
                DocScope::Agency { agency: a.into() },
                3,
                1,
                String::new(),
            )
        };
        let other_unit = sign::sign_config(
            &key(),
            DocScope::Unit {
                unit: UnitId::new("metro-pd", "car-13").unwrap(),
            },
            3,
            1,
            String::new(),
        );
        let mut tampered = good.clone();
        tampered.body.push('#');
        let mut unsigned = good.clone();
        unsigned.key_id = muster_proto::KeyId::NONE;
        unsigned.sig = muster_proto::Signature::NONE;
        let stranger = SigningKey::from_seed(&[8; 32]);
        let enc = |d: &ConfigDoc| encode_config(d).unwrap();
        let seen3 = Some(doc_ref(&good));
        let seen4 = Some(doc_ref(&unit_doc(4, "")));
        type Case = (
            &'static str,
            Vec<u8>,
            DocScopeKind,
            Option<DocRef>,
            Option<RefusalReason>,
        );
        let cases: Vec<Case> = vec![
            ("good", enc(&good), DocScopeKind::Unit, None, None),
            (
                "garbage",
                vec![2, 0xff, 0xff],
                DocScopeKind::Unit,
                None,
                Some(RefusalReason::Malformed),
            ),
            (
                "empty",
                vec![],
                DocScopeKind::Unit,
                None,
                Some(RefusalReason::Malformed),
            ),
            (
                "unsigned",
                enc(&unsigned),
                DocScopeKind::Unit,
                None,
                Some(RefusalReason::Unsigned),
            ),
            (
                "tampered",
                enc(&tampered),
                DocScopeKind::Unit,
                None,
                Some(RefusalReason::BadSignature),
            ),
            (
                "stranger's key",
                enc(&sign::sign_config(
                    &stranger,
                    DocScope::Unit { unit: me() },
                    3,
                    1,
                    String::new(),
                )),
                DocScopeKind::Unit,
                None,
                Some(RefusalReason::UntrustedKey),
            ),
            (
                "another unit's",
                enc(&other_unit),
                DocScopeKind::Unit,
                None,
                Some(RefusalReason::WrongUnit),
            ),
            (
                "agency doc on unit topic",
                enc(&agency("metro-pd", &key())),
                DocScopeKind::Unit,
                None,
                Some(RefusalReason::WrongUnit),
            ),
            (
                "another agency's",
                enc(&agency("county-ems", &key())),
                DocScopeKind::Agency,
                None,
                Some(RefusalReason::WrongAgency),
            ),
            (
                "unit doc on agency topic",
                enc(&good),
                DocScopeKind::Agency,
                None,
                Some(RefusalReason::WrongAgency),
            ),
            (
                "own agency's",
                enc(&agency("metro-pd", &key())),
                DocScopeKind::Agency,
                None,
                None,
            ),
            (
                "older version",
                enc(&good),
                DocScopeKind::Unit,
                seen4,
                Some(RefusalReason::OldVersion),
            ),
            (
                "same version, other body",
                enc(&unit_doc(3, "")),
                DocScopeKind::Unit,
                seen3,
                Some(RefusalReason::OldVersion),
            ),
        ];
        for (name, bytes, kind, seen, want) in cases {
            let got = check(&bytes, kind, &me(), &trusted(), seen);
            match want {
                None => assert!(matches!(got, Ok(Some(_))), "{name}: {got:?}"),
                Some(r) => assert_eq!(got.map(|_| ()).unwrap_err().reason, r, "{name}"),
            }
        }
        // The same document again (a retained redelivery): nothing to do.
        assert_eq!(
            check(&enc(&good), DocScopeKind::Unit, &me(), &trusted(), seen3),
            Ok(None)
        );
    }

    #[test]
    fn merge_replaces_whole_sections_in_order_and_refuses_whole() {
        let cfg = local();
        let agency = sign::sign_config(
            &key(),
            DocScope::Agency { agency: "metro-pd".into() },
            1,
            1,
            "[sampling]\ninterval = \"20s\"\n\n[[probe]]\nname = \"cad\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:9\"\ninterval = \"10s\"\n".into(),
        );
        let unit = unit_doc(1, "[sampling]\ninterval = \"30s\"\n");
        let e = merge(&cfg, Some(&agency), Some(&unit)).unwrap();
        assert_eq!(
            e.config.sampling.interval,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(e.config.probes.len(), 1);
        assert_eq!(e.config.unit, me());
        // Deterministic: the same documents make the same hash.
        assert_eq!(
            merge(&cfg, Some(&agency), Some(&unit)).unwrap().hash,
            e.hash
        );
        assert_ne!(merge(&cfg, Some(&agency), None).unwrap().hash, e.hash);
        let local_only = merge(&cfg, None, None).unwrap();
        assert_eq!(
            local_only.config.sampling.interval,
            std::time::Duration::from_secs(5)
        );

        let cases: &[(&str, RefusalReason)] = &[
            (
                "[mqtt]\nurl = \"mqtt://evil:1883\"\n",
                RefusalReason::SectionNotAllowed,
            ),
            (
                "[remote]\nallow = [\"mqtt\"]\n",
                RefusalReason::SectionNotAllowed,
            ),
            ("unit_id = \"car-13\"\n", RefusalReason::SectionNotAllowed),
            // Allowed sections with one bad: refused whole.
            (
                "[sampling]\ninterval = \"10s\"\n[buffer]\nmax_bytes = \"1GB\"\n",
                RefusalReason::SectionNotAllowed,
            ),
            (
                "[[probe]]\nname = \"x\"\nkind = \"tcp\"\ntarget = \"nohost\"\n",
                RefusalReason::Invalid,
            ),
            ("[sampling]\ninterval = \"soon\"\n", RefusalReason::Invalid),
            ("[sampling\n", RefusalReason::Malformed),
        ];
        for (body, want) in cases {
            let d = unit_doc(2, body);
            let got = merge(&cfg, Some(&agency), Some(&d));
            assert_eq!(got.map(|_| ()).unwrap_err().reason, *want, "{body}");
        }
    }
}
