//! Pure halves of the Windows Mobile Broadband API reader (issue 12): the
//! API's numbers turned into the sample's words. No Windows types here, so
//! the mapping is compiled and table-tested on every platform; the COM calls
//! live in `cellular.rs` (`windows` module).
//!
//! Contract:
//! * [`asu_to_dbm`]: `IMbnSignal::GetSignalStrength` is 0..=31 in ASU
//!   (3GPP TS 27.007 `+CSQ`): RSSI dBm = −113 + 2·asu; 99 is unknown, and
//!   anything else out of range is not trusted (`None`).
//! * [`technology`]: an `MBN_DATA_CLASS` bitmask → the same short names as
//!   ModemManager's side (`5gnr`, `lte`, `umts`, `cdma`, `edge`, `gsm`, "").
//! * [`ready_state`]: `MBN_READY_STATE` → go on, absent (no SIM, radio off:
//!   `auto` says nothing) or failed (a modem a person must look at).
//! * [`hresult_words`]/[`describe`]: the HRESULTs the reader meets, in words,
//!   always with the hex code; [`is_absent`]: the ones that mean "there is no
//!   mobile broadband here" (class not registered, no interface).

/// `MBN_RSSI_UNKNOWN`.
pub const RSSI_UNKNOWN: u32 = 99;

/// ASU (0..=31) → RSSI in dBm; 99 and nonsense → `None`.
pub fn asu_to_dbm(asu: u32) -> Option<i16> {
    (asu <= 31).then(|| -113 + 2 * asu as i16)
}

/// `MBN_DATA_CLASS` bits.
mod class {
    pub const GPRS: u32 = 0x1;
    pub const EDGE: u32 = 0x2;
    pub const UMTS: u32 = 0x4;
    pub const HSDPA: u32 = 0x8;
    pub const HSUPA: u32 = 0x10;
    pub const LTE: u32 = 0x20;
    pub const NR_NSA: u32 = 0x40;
    pub const NR_SA: u32 = 0x80;
    /// 1xRTT, 1xEV-DO (rev A/B), 1xEV-DV, 3xRTT, UMB.
    pub const CDMA: u32 =
        0x1_0000 | 0x2_0000 | 0x4_0000 | 0x8_0000 | 0x10_0000 | 0x20_0000 | 0x40_0000;
}

/// `MBN_DATA_CLASS` bitmask → a short name ("" when none or custom only).
pub fn technology(bits: u32) -> &'static str {
    if bits & (class::NR_NSA | class::NR_SA) != 0 {
        "5gnr"
    } else if bits & class::LTE != 0 {
        "lte"
    } else if bits & (class::UMTS | class::HSDPA | class::HSUPA) != 0 {
        "umts"
    } else if bits & class::CDMA != 0 {
        "cdma"
    } else if bits & class::EDGE != 0 {
        "edge"
    } else if bits & class::GPRS != 0 {
        "gsm"
    } else {
        ""
    }
}

/// What a device's ready state means for this sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// `MBN_READY_STATE_INITIALIZED`: read the figures.
    Yes,
    /// No SIM, no eSIM profile, radio off: nothing to read, not a fault.
    Absent(&'static str),
    /// A modem that cannot work as it is (bad SIM, locked, ...).
    Failed(&'static str),
}

/// `MBN_READY_STATE` → [`Ready`].
pub fn ready_state(state: i32) -> Ready {
    match state {
        1 => Ready::Yes,
        0 => Ready::Absent("the mobile broadband device is off (radio off or airplane mode)"),
        2 => Ready::Absent("no SIM is inserted in the mobile broadband device"),
        8 => Ready::Absent("the mobile broadband device has no eSIM profile"),
        3 => Ready::Failed("the SIM in the mobile broadband device is bad"),
        4 => Ready::Failed("the mobile broadband device failed to initialise"),
        5 => Ready::Failed("the mobile broadband subscription is not activated"),
        6 => Ready::Failed("the mobile broadband device is locked (PIN required)"),
        7 => Ready::Failed("the mobile broadband device is blocked (PUK required)"),
        _ => Ready::Failed("the mobile broadband device is in an unknown ready state"),
    }
}

pub const REGDB_E_CLASSNOTREG: u32 = 0x8004_0154;
/// `HRESULT_FROM_WIN32(ERROR_NOT_FOUND)`: no such element (no interface).
pub const E_NOT_FOUND: u32 = 0x8007_0490;
/// `HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED)`.
pub const E_NOT_SUPPORTED: u32 = 0x8007_0032;
/// `HRESULT_FROM_WIN32(ERROR_SERVICE_NOT_ACTIVE)`: WwanSvc stopped.
pub const E_SERVICE_NOT_ACTIVE: u32 = 0x8007_0426;

/// The HRESULTs the reader meets, in words.
pub fn hresult_words(hr: u32) -> Option<&'static str> {
    Some(match hr {
        REGDB_E_CLASSNOTREG => "class not registered (no Mobile Broadband API on this system)",
        E_NOT_FOUND => "not found",
        E_NOT_SUPPORTED => "not supported",
        E_SERVICE_NOT_ACTIVE => "the WWAN AutoConfig service (WwanSvc) is not running",
        0x8000_000A => "the device has not answered yet (E_PENDING)",
        0x8000_4005 => "unspecified failure (E_FAIL)",
        0x8000_4002 => "interface not supported (E_NOINTERFACE)",
        0x8000_4001 => "not implemented (E_NOTIMPL)",
        0x8007_0005 => "access denied",
        0x8007_000E => "out of memory",
        0x8007_0057 => "invalid argument",
        0x8001_0106 => "COM is already initialised in another mode on this thread",
        0x8004_0150 | 0x8004_0151 => "the COM registry entries are unreadable",
        0x8008_0005 => "the COM server failed to start",
        0x8054_8202 => "bad SIM",
        0x8054_8203 => "data class not available",
        0x8054_8208 => "radio is off",
        0x8054_8209 => "service not activated",
        0x8054_820A => "SIM not inserted",
        0x8054_820D => "not registered to a network",
        0x8054_8210 => "PIN required",
        0x8054_8212 => "mobile broadband failure",
        _ => return None,
    })
}

/// HRESULTs that mean "no mobile broadband here": `auto` says nothing.
pub fn is_absent(hr: u32) -> bool {
    matches!(
        hr,
        REGDB_E_CLASSNOTREG | E_NOT_FOUND | E_SERVICE_NOT_ACTIVE | 0x8054_820A | 0x8054_8208
    )
}

/// `"<step> failed: <words> (0x…)"`; `system` is the OS's own message, used
/// when the code is not in [`hresult_words`].
pub fn describe(step: &str, hr: u32, system: &str) -> String {
    let system = system.trim();
    match hresult_words(hr) {
        Some(w) => format!("Mobile Broadband API: {step} failed: {w} (0x{hr:08X})"),
        None if !system.is_empty() => {
            let s: String = system.chars().take(120).collect();
            format!("Mobile Broadband API: {step} failed: {s} (0x{hr:08X})")
        }
        None => format!("Mobile Broadband API: {step} failed: HRESULT 0x{hr:08X}"),
    }
}

/// The MBN interface id (`{GUID}`) → the adapter's friendly name, which the
/// default route is named by; the id itself when no adapter matches.
pub fn interface_name<'a>(
    id: &str,
    adapters: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let bare = |s: &str| {
        s.trim()
            .trim_matches(|c| c == '{' || c == '}')
            .to_ascii_lowercase()
    };
    let want = bare(id);
    adapters
        .into_iter()
        .find(|(guid, name)| !want.is_empty() && bare(guid) == want && !name.is_empty())
        .map(|(_, name)| name.chars().take(64).collect())
        .unwrap_or_else(|| id.chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asu_to_rssi() {
        assert_eq!(asu_to_dbm(0), Some(-113));
        assert_eq!(asu_to_dbm(1), Some(-111));
        assert_eq!(asu_to_dbm(15), Some(-83));
        assert_eq!(asu_to_dbm(31), Some(-51));
        assert_eq!(asu_to_dbm(32), None);
        assert_eq!(asu_to_dbm(RSSI_UNKNOWN), None);
        assert_eq!(asu_to_dbm(u32::MAX), None);
    }

    #[test]
    fn data_classes() {
        for (bits, want) in [
            (0, ""),
            (0x8000_0000, ""),
            (0x1, "gsm"),
            (0x2 | 0x1, "edge"),
            (0x4, "umts"),
            (0x8 | 0x10, "umts"),
            (0x1_0000, "cdma"),
            (0x20_0000, "cdma"),
            (0x20 | 0x8 | 0x1, "lte"),
            (0x40 | 0x20, "5gnr"),
            (0x80, "5gnr"),
        ] {
            assert_eq!(technology(bits), want, "bits {bits:#x}");
        }
    }

    #[test]
    fn ready_states() {
        assert_eq!(ready_state(1), Ready::Yes);
        for s in [0, 2, 8] {
            assert!(matches!(ready_state(s), Ready::Absent(_)), "{s}");
        }
        for s in [3, 4, 5, 6, 7, 9, -1] {
            assert!(matches!(ready_state(s), Ready::Failed(_)), "{s}");
        }
    }

    #[test]
    fn hresults_in_words() {
        assert_eq!(
            describe(
                "CoCreateInstance(MbnInterfaceManager)",
                REGDB_E_CLASSNOTREG,
                "whatever"
            ),
            "Mobile Broadband API: CoCreateInstance(MbnInterfaceManager) failed: class not registered (no Mobile Broadband API on this system) (0x80040154)"
        );
        assert_eq!(
            describe("GetInterfaces", 0x8007_1234, " The OS says so.\r\n"),
            "Mobile Broadband API: GetInterfaces failed: The OS says so. (0x80071234)"
        );
        assert_eq!(
            describe("GetInterfaces", 0x8007_1234, ""),
            "Mobile Broadband API: GetInterfaces failed: HRESULT 0x80071234"
        );
        assert!(describe("x", 1, &"y".repeat(1000)).len() < 200);
        assert!(is_absent(REGDB_E_CLASSNOTREG));
        assert!(is_absent(E_NOT_FOUND));
        assert!(!is_absent(0x8000_4005));
        assert!(!is_absent(0x8007_0005));
    }

    #[test]
    fn interface_names() {
        let adapters = [
            ("{AAAA-1}", "Ethernet"),
            ("{3F2504E0-4F89-11D3-9A0C-0305E82C3301}", "Cellular"),
        ];
        assert_eq!(
            interface_name("{3f2504e0-4f89-11d3-9a0c-0305e82c3301}", adapters),
            "Cellular"
        );
        assert_eq!(interface_name("{BBBB}", adapters), "{BBBB}");
        assert_eq!(interface_name("", [("", "Ethernet")]), "");
    }
}
