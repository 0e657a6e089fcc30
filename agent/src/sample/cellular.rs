//! The cellular modem (issue 12): access technology, operator, RSSI, RSRP,
//! RSRQ, SINR.
//!
//! Contract:
//! * Linux: ModemManager on the system D-Bus (`DBUS_SYSTEM_BUS_ADDRESS`
//!   honoured): `GetManagedObjects` on `/org/freedesktop/ModemManager1`; the
//!   first modem by object path; `Modem.AccessTechnologies` (bitmask →
//!   [`technology`]), `Modem.Ports` (the `net` port is the data interface),
//!   `Modem3gpp.OperatorName` (else `OperatorCode`), and `Modem.Signal`:
//!   `Setup(rate)` is called once per modem (rate =
//!   `network.cellular_refresh` in seconds), then the `Nr5g`/`Lte`/`Umts`/`Gsm` dicts (`rssi`, `rsrp`,
//!   `rsrq`, `snr`/`sinr`, doubles) are read: the current technology's dict
//!   first, else the first non-empty ([`figures`], pure).
//! * The sampling thread never waits on D-Bus for longer than
//!   `network.cellular_timeout`: the D-Bus calls run on a dedicated thread
//!   (`modem`) over a blocking connection ([`crate::dbus`]); the sampler
//!   asks it for a reading and waits at most the timeout
//!   ([`CellularReader::read`]); a bus that does not answer is a failure for
//!   this sample, and the worker's own calls are bounded by the same
//!   timeout, so it is free again soon.
//! * Cadence: ModemManager refreshes the figures only at the `Setup` rate,
//!   so a good reading stands for `network.cellular_refresh` (default 10 s)
//!   and samples in between reuse it without asking the thread (no D-Bus
//!   round trip); a failure is asked about again at the next sample.
//! * `network.cellular`: `auto`: no system bus, no ModemManager or no modem
//!   is `Ok(None)`, no failure; `required`: each of those is a failure with
//!   its reason; `off`: not asked (no thread). An absent modem is asked
//!   about again only after [`ABSENT_RECHECK`] (60 s), so a terminal
//!   without one pays nothing per sample.
//! * Windows: the Mobile Broadband API (COM, mbnapi) on the same `modem`
//!   thread shape, in the multithreaded apartment: `CoCreateInstance(
//!   MbnInterfaceManager)` (kept while it works) → `GetInterfaces` → the
//!   first interface: `InterfaceID` (mapped to the adapter's friendly name,
//!   which names the default route), `GetReadyState`, then
//!   `IMbnRegistration::GetProviderName` (else provider id, else the home
//!   provider), `GetCurrentDataClass` (→ [`super::mbn::technology`]) and
//!   `IMbnSignal::GetSignalStrength` (ASU → RSSI dBm). The API offers no
//!   RSRP/RSRQ/SINR: those stay `None`. Class not registered, no interface,
//!   WwanSvc stopped, no SIM, radio off are absent (`auto`: `Ok(None)`); any
//!   other HRESULT is a failure naming the step and the HRESULT in words
//!   ([`super::mbn::describe`]). The pure mapping lives in `mbn.rs`.

// Real time: the modem thread and the sampler's bounded wait on it are
// blocking std code on their own threads (the reuse rule itself takes `now`).
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use muster_proto::Cellular;

use crate::config::CellularMode;

/// A modem's properties, already out of D-Bus types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModemProps {
    pub access_technologies: u32,
    /// `(name, MMModemPortType)`; type 2 is `net`.
    pub ports: Vec<(String, u32)>,
    pub operator_name: String,
    pub operator_code: String,
    /// `Nr5g`, `Lte`, `Umts`, `Gsm` → their figures.
    pub signal: HashMap<String, HashMap<String, f64>>,
}

/// MMModemAccessTechnology bitmask → a short name ("" when unknown).
pub fn technology(bits: u32) -> &'static str {
    if bits & (1 << 15) != 0 {
        "5gnr"
    } else if bits & ((1 << 14) | (1 << 16) | (1 << 17)) != 0 {
        "lte"
    } else if bits & (0b11111 << 5) != 0 {
        "umts"
    } else if bits & (0b1111 << 10) != 0 {
        "cdma"
    } else if bits & (1 << 4) != 0 {
        "edge"
    } else if bits & (0b111 << 1) != 0 {
        "gsm"
    } else {
        ""
    }
}

/// The signal dict to read for a technology, in preference order.
fn dict_order(tech: &str) -> [&'static str; 5] {
    let first = match tech {
        "5gnr" => "Nr5g",
        "lte" => "Lte",
        "umts" => "Umts",
        "gsm" | "edge" => "Gsm",
        _ => "Lte",
    };
    [first, "Nr5g", "Lte", "Umts", "Gsm"]
}

fn dbm(v: Option<&f64>, scale: f64) -> Option<i16> {
    let v = *v?;
    let x = (v * scale).round();
    (v.is_finite() && x >= i16::MIN as f64 && x <= i16::MAX as f64).then_some(x as i16)
}

/// `(rssi, rsrp, rsrq×10, sinr×10)` from a modem's signal dicts.
pub fn figures(p: &ModemProps, tech: &str) -> [Option<i16>; 4] {
    let d = dict_order(tech)
        .into_iter()
        .filter_map(|k| p.signal.get(k))
        .find(|d| !d.is_empty());
    let Some(d) = d else {
        return [None; 4];
    };
    [
        dbm(d.get("rssi"), 1.0),
        dbm(d.get("rsrp"), 1.0),
        dbm(d.get("rsrq"), 10.0),
        dbm(d.get("sinr").or(d.get("snr")), 10.0),
    ]
}

/// A modem's properties → the sample's cellular part.
pub fn to_cellular(p: &ModemProps) -> Cellular {
    let tech = technology(p.access_technologies);
    let [rssi_dbm, rsrp_dbm, rsrq_db_x10, sinr_db_x10] = figures(p, tech);
    Cellular {
        interface: p
            .ports
            .iter()
            .find(|(_, t)| *t == 2)
            .map(|(n, _)| n.clone())
            .unwrap_or_default(),
        technology: tech.to_owned(),
        operator: if p.operator_name.is_empty() {
            p.operator_code.clone()
        } else {
            p.operator_name.clone()
        },
        rssi_dbm,
        rsrp_dbm,
        rsrq_db_x10,
        sinr_db_x10,
    }
}

/// Why there is no modem reading: absent (a failure only when required) or broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoModem {
    /// No bus, no ModemManager, or no modem: the reason, for `required`.
    Absent(String),
    /// ModemManager answered badly, or not in time: always a failure.
    Failed(String),
}

/// `auto`/`required` applied to a reading.
pub fn apply_mode(
    mode: CellularMode,
    r: Result<Cellular, NoModem>,
) -> Result<Option<Cellular>, String> {
    match (r, mode) {
        (_, CellularMode::Off) => Ok(None),
        (Ok(c), _) => Ok(Some(c)),
        (Err(NoModem::Absent(_)), CellularMode::Auto) => Ok(None),
        (Err(NoModem::Absent(why)), CellularMode::Required) => Err(why),
        (Err(NoModem::Failed(why)), _) => Err(why),
    }
}

/// One bounded reading, as the worker thread produces it.
pub type Poll = Box<dyn FnMut() -> Result<Cellular, NoModem>>;

struct Slot {
    generation: u64,
    reading: Result<Cellular, NoModem>,
    /// When `reading` was taken.
    at: Instant,
}

/// No modem API or no modem (`Absent`) is asked again only after this long,
/// not every sample: a terminal without a modem pays nothing per sample.
pub const ABSENT_RECHECK: Duration = Duration::from_secs(60);

/// The `modem` thread's handle; dropping it ends the thread (after at most
/// one pass of the source's calls).
pub struct CellularReader {
    mode: CellularMode,
    timeout: Duration,
    /// Who did not answer, for the timeout reason ("ModemManager").
    source: &'static str,
    req: SyncSender<()>,
    shared: Arc<(Mutex<Slot>, Condvar)>,
    /// How long an `Absent` reading stands before the source is asked again
    /// ([`ABSENT_RECHECK`]).
    absent_recheck: Duration,
    /// How long an `Ok` reading stands (`network.cellular_refresh`).
    refresh: Duration,
    /// The clock readings are aged by (tests move it).
    now: fn() -> Instant,
}

impl CellularReader {
    /// Starts the `modem` thread: `make` runs on it first (a runtime, COM)
    /// and returns the poll it then runs once per [`CellularReader::read`].
    pub fn spawn(
        mode: CellularMode,
        timeout: Duration,
        source: &'static str,
        make: impl FnOnce() -> Result<Poll, NoModem> + Send + 'static,
    ) -> Result<CellularReader, String> {
        let (req, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let shared = Arc::new((
            Mutex::new(Slot {
                generation: 0,
                reading: Err(NoModem::Failed(format!("{source} not asked yet"))),
                at: Instant::now(),
            }),
            Condvar::new(),
        ));
        let sh = shared.clone();
        let publish = move |r: Result<Cellular, NoModem>| {
            let (m, c) = &*sh;
            let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
            s.generation += 1;
            s.reading = r;
            s.at = Instant::now();
            c.notify_all();
        };
        std::thread::Builder::new()
            .name("modem".into())
            .stack_size(512 * 1024)
            .spawn(move || {
                let mut poll = match make() {
                    Ok(p) => p,
                    Err(e) => {
                        publish(Err(e));
                        return;
                    }
                };
                while rx.recv().is_ok() {
                    publish(poll());
                }
            })
            .map_err(|e| format!("cannot start the modem thread: {e}"))?;
        Ok(CellularReader {
            mode,
            timeout,
            source,
            req,
            shared,
            absent_recheck: ABSENT_RECHECK,
            refresh: Duration::ZERO,
            now: Instant::now,
        })
    }

    /// A fresh reading, waiting at most the configured timeout.
    pub fn read(&self) -> Result<Option<Cellular>, String> {
        let (m, c) = &*self.shared;
        let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
        let age = (self.now)().saturating_duration_since(s.at);
        let stands = match s.reading {
            // The modem's figures change only at the refresh rate.
            Ok(_) => age < self.refresh,
            Err(NoModem::Absent(_)) => age < self.absent_recheck,
            // A failure is asked about again at the next sample.
            Err(NoModem::Failed(_)) => false,
        };
        if stands && s.generation > 0 {
            return apply_mode(self.mode, s.reading.clone());
        }
        let asked = s.generation;
        match self.req.try_send(()) {
            // Full: a request is already queued; its answer is fresh enough.
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                return apply_mode(self.mode, s.reading.clone());
            }
        }
        let deadline = Instant::now() + self.timeout;
        while s.generation == asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} did not answer within {:?}",
                    self.source, self.timeout
                ));
            }
            s = c.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        apply_mode(self.mode, s.reading.clone())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashSet;

    use super::*;
    use crate::dbus::{Conn, DbusError, Value};

    const MM: &str = "org.freedesktop.ModemManager1";
    const MM_PATH: &str = "/org/freedesktop/ModemManager1";
    const MODEM: &str = "org.freedesktop.ModemManager1.Modem";
    const GPP: &str = "org.freedesktop.ModemManager1.Modem.Modem3gpp";
    const SIGNAL: &str = "org.freedesktop.ModemManager1.Modem.Signal";
    const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";
    const NOT_RUNNING: &str =
        "ModemManager is not running (org.freedesktop.ModemManager1 is not on the system D-Bus)";

    /// ModemManager on the `modem` thread, over a blocking connection whose
    /// calls each wait at most `timeout`.
    pub fn start(
        mode: CellularMode,
        timeout: Duration,
        rate_s: u32,
    ) -> Result<CellularReader, String> {
        CellularReader::spawn(mode, timeout, "ModemManager", move || {
            let mut w = Worker {
                conn: None,
                set_up: HashSet::new(),
                rate_s: rate_s.max(1),
                timeout,
            };
            Ok(Box::new(move || {
                let r = w.poll();
                if r.is_err() {
                    // A restarted bus or a broken connection: start afresh next time.
                    w.conn = None;
                }
                r
            }))
        })
    }

    struct Worker {
        conn: Option<Conn>,
        set_up: HashSet<String>,
        rate_s: u32,
        timeout: Duration,
    }

    fn failed(what: &str, e: DbusError) -> NoModem {
        match e {
            DbusError::Timeout(t) => {
                NoModem::Failed(format!("ModemManager did not answer within {t:?}"))
            }
            e => NoModem::Failed(format!("ModemManager {what} failed: {e}")),
        }
    }

    impl Worker {
        fn poll(&mut self) -> Result<Cellular, NoModem> {
            let conn = match &mut self.conn {
                Some(c) => c,
                None => {
                    let c = Conn::system(self.timeout).map_err(|e| match e {
                        DbusError::Address(_) | DbusError::Io(_) | DbusError::Closed => {
                            NoModem::Absent(format!(
                                "cannot connect to the system D-Bus to ask ModemManager: {e}"
                            ))
                        }
                        e => failed("connection", e),
                    })?;
                    self.conn.insert(c)
                }
            };
            // Asked first so that a ModemManager installed but not running is
            // not started by D-Bus activation on the sampler's behalf.
            if !conn
                .name_has_owner(MM)
                .map_err(|e| failed("NameHasOwner", e))?
            {
                return Err(NoModem::Absent(NOT_RUNNING.into()));
            }
            let objects = match conn.call(MM, MM_PATH, OBJECT_MANAGER, "GetManagedObjects", vec![])
            {
                Ok(mut o) if o.len() == 1 => o.remove(0),
                Ok(_) => {
                    return Err(NoModem::Failed(
                        "ModemManager GetManagedObjects: not one a{oa{sa{sv}}}".into(),
                    ));
                }
                Err(e) if e.is_absent() => return Err(NoModem::Absent(NOT_RUNNING.into())),
                Err(e) => return Err(failed("GetManagedObjects", e)),
            };
            let mut modems: Vec<(&str, &Value)> = objects
                .dict_entries()
                .into_iter()
                .flatten()
                .filter(|(_, i)| i.dict_get(MODEM).is_some())
                .collect();
            modems.sort_by(|a, b| a.0.cmp(b.0));
            let Some((path, ifaces)) = modems.into_iter().next() else {
                return Err(NoModem::Absent("ModemManager sees no modem".into()));
            };
            let path = path.to_owned();
            let mut p = ModemProps::default();
            if let Some(m) = ifaces.dict_get(MODEM) {
                p.access_technologies = m
                    .dict_get("AccessTechnologies")
                    .and_then(|v| v.unvariant().as_u32())
                    .unwrap_or(0);
                if let Some(Value::Array(_, ports)) = m.dict_get("Ports").map(Value::unvariant) {
                    p.ports = ports
                        .iter()
                        .filter_map(|port| match port {
                            Value::Struct(f) => match f.as_slice() {
                                // Interface names are short; a longer one is not trusted whole.
                                [Value::Str(n), Value::U32(t)] => {
                                    Some((n.chars().take(64).collect(), *t))
                                }
                                _ => None,
                            },
                            _ => None,
                        })
                        .take(64)
                        .collect();
                }
            }
            if let Some(g) = ifaces.dict_get(GPP) {
                let s = |k: &str| {
                    g.dict_get(k)
                        .and_then(|v| match v.unvariant() {
                            Value::Str(s) => Some(s.chars().take(64).collect()),
                            _ => None,
                        })
                        .unwrap_or_default()
                };
                p.operator_name = s("OperatorName");
                p.operator_code = s("OperatorCode");
            }
            if let Some(sig) = ifaces.dict_get(SIGNAL) {
                let mut props = sig.clone();
                if !self.set_up.contains(&path) {
                    conn.call(MM, &path, SIGNAL, "Setup", vec![Value::U32(self.rate_s)])
                        .map_err(|e| failed("Signal.Setup", e))?;
                    self.set_up.insert(path.clone());
                    // The figures as they are after Setup.
                    if let Ok(mut all) = conn.call(
                        MM,
                        &path,
                        crate::dbus::conn::PROPERTIES,
                        "GetAll",
                        vec![Value::str(SIGNAL)],
                    ) && all.len() == 1
                    {
                        props = all.remove(0);
                    }
                }
                for k in ["Nr5g", "Lte", "Umts", "Gsm"] {
                    if let Some(d) = props.dict_get(k).and_then(dict_f64) {
                        p.signal.insert(k.to_owned(), d);
                    }
                }
            }
            Ok(to_cellular(&p))
        }
    }

    /// An `a{sv}` (in a variant) of doubles (other entries ignored), at most 16.
    fn dict_f64(v: &Value) -> Option<HashMap<String, f64>> {
        Some(
            v.unvariant()
                .dict_entries()?
                .filter_map(|(k, v)| Some((k.to_owned(), v.unvariant().as_f64()?)))
                .take(16)
                .collect(),
        )
    }
}

#[cfg(windows)]
mod mbn_com {
    use std::time::Duration;

    use windows::Win32::NetworkManagement::MobileBroadband::{
        IMbnInterface, IMbnInterfaceManager, IMbnRegistration, IMbnSignal, MbnInterfaceManager,
    };
    use windows::Win32::System::Com::{
        CLSCTX_ALL, COINIT_MULTITHREADED, CoCreateInstance, CoInitializeEx, CoUninitialize,
        SAFEARRAY,
    };
    use windows::Win32::System::Ole::{
        SafeArrayDestroy, SafeArrayGetElement, SafeArrayGetLBound, SafeArrayGetUBound,
    };
    use windows::core::{IUnknown, Interface};

    use super::super::mbn;
    use super::*;

    fn fail(step: &str, e: &windows::core::Error) -> NoModem {
        let hr = e.code().0 as u32;
        let why = mbn::describe(step, hr, &e.message());
        if mbn::is_absent(hr) {
            NoModem::Absent(why)
        } else {
            NoModem::Failed(why)
        }
    }

    /// COM for this thread; uninitialised when the worker goes.
    struct Com;

    impl Drop for Com {
        fn drop(&mut self) {
            // SAFETY: paired with the successful CoInitializeEx in `start`.
            unsafe { CoUninitialize() };
        }
    }

    /// Fields drop in order: the manager before COM goes.
    struct Worker {
        manager: Option<IMbnInterfaceManager>,
        _com: Com,
    }

    /// The Mobile Broadband API on the `modem` thread, in COM's
    /// multithreaded apartment.
    pub fn start(mode: CellularMode, timeout: Duration) -> Result<CellularReader, String> {
        CellularReader::spawn(mode, timeout, "the Mobile Broadband API", move || {
            // SAFETY: once, on this thread; undone by `Com`'s drop.
            unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) }
                .ok()
                .map_err(|e| fail("CoInitializeEx", &e))?;
            let mut w = Worker {
                manager: None,
                _com: Com,
            };
            Ok(Box::new(move || {
                let r = w.poll();
                if r.is_err() {
                    // WwanSvc restarted, a device came or went: afresh next time.
                    w.manager = None;
                }
                r
            }))
        })
    }

    /// The interfaces in a SAFEARRAY of `IUnknown` (at most 16); the array
    /// is destroyed.
    unsafe fn interfaces(psa: *mut SAFEARRAY) -> Result<Vec<IMbnInterface>, NoModem> {
        if psa.is_null() {
            return Ok(Vec::new());
        }
        struct Guard(*mut SAFEARRAY);
        impl Drop for Guard {
            fn drop(&mut self) {
                // SAFETY: the array GetInterfaces handed over to us.
                let _ = unsafe { SafeArrayDestroy(self.0) };
            }
        }
        let g = Guard(psa);
        // SAFETY: a one-dimensional array from GetInterfaces.
        let (lo, hi) = unsafe {
            (
                SafeArrayGetLBound(g.0, 1).map_err(|e| fail("SafeArrayGetLBound", &e))?,
                SafeArrayGetUBound(g.0, 1).map_err(|e| fail("SafeArrayGetUBound", &e))?,
            )
        };
        let mut out = Vec::new();
        for i in lo..=hi.min(lo.saturating_add(15)) {
            let mut unk: Option<IUnknown> = None;
            // SAFETY: VT_UNKNOWN elements: GetElement AddRefs into `unk`,
            // which then owns that reference.
            unsafe {
                SafeArrayGetElement(g.0, &i, (&mut unk as *mut Option<IUnknown>).cast())
                    .map_err(|e| fail("SafeArrayGetElement", &e))?
            };
            if let Some(u) = unk {
                out.push(
                    u.cast::<IMbnInterface>()
                        .map_err(|e| fail("QueryInterface(IMbnInterface)", &e))?,
                );
            }
        }
        Ok(out)
    }

    fn bstr(b: &windows::core::BSTR) -> String {
        String::from_utf16_lossy(b).chars().take(64).collect()
    }

    impl Worker {
        fn poll(&mut self) -> Result<Cellular, NoModem> {
            let manager = match &self.manager {
                Some(m) => m.clone(),
                None => {
                    // SAFETY: COM is initialised on this thread.
                    let m: IMbnInterfaceManager =
                        unsafe { CoCreateInstance(&MbnInterfaceManager, None, CLSCTX_ALL) }
                            .map_err(|e| fail("CoCreateInstance(MbnInterfaceManager)", &e))?;
                    self.manager = Some(m.clone());
                    m
                }
            };
            // SAFETY: a live interface pointer; the array is ours to destroy.
            let psa = unsafe { manager.GetInterfaces() }
                .map_err(|e| fail("IMbnInterfaceManager::GetInterfaces", &e))?;
            // SAFETY: as GetInterfaces returned it.
            let ifaces = unsafe { interfaces(psa) }?;
            let Some(iface) = ifaces.into_iter().next() else {
                return Err(NoModem::Absent(
                    "the Mobile Broadband API sees no mobile broadband interface".into(),
                ));
            };
            // SAFETY (all calls below): live COM interfaces on their own
            // apartment's thread; out-parameters are owned by the wrappers.
            // SAFETY: a live COM interface, called on its own apartment thread; the out-value is owned by the wrapper.
            let id = unsafe { iface.InterfaceID() }
                .map(|b| bstr(&b))
                .map_err(|e| fail("IMbnInterface::InterfaceID", &e))?;
            // SAFETY: a live COM interface, called on its own apartment thread; the out-value is owned by the wrapper.
            let state = unsafe { iface.GetReadyState() }
                .map_err(|e| fail("IMbnInterface::GetReadyState", &e))?;
            match mbn::ready_state(state.0) {
                mbn::Ready::Yes => {}
                mbn::Ready::Absent(why) => return Err(NoModem::Absent(why.into())),
                mbn::Ready::Failed(why) => return Err(NoModem::Failed(why.into())),
            }
            let adapters = super::super::win::adapters().unwrap_or_default();
            let mut c = Cellular {
                interface: mbn::interface_name(
                    &id,
                    adapters
                        .iter()
                        .map(|a| (a.guid.as_str(), a.friendly_name.as_str())),
                ),
                ..Default::default()
            };
            // Each figure is optional: a device still registering has some
            // and not others (E_PENDING, not registered).
            if let Ok(reg) = iface.cast::<IMbnRegistration>() {
                // SAFETY: a live COM interface, called on its own apartment thread; the out-value is owned by the wrapper.
                if let Ok(name) = unsafe { reg.GetProviderName() } {
                    c.operator = bstr(&name);
                }
                if c.operator.is_empty()
                    // SAFETY: a live COM interface, called on its own apartment thread; the out-value is owned by the wrapper.
                    && let Ok(pid) = unsafe { reg.GetProviderID() }
                {
                    c.operator = bstr(&pid);
                }
                // SAFETY: a live COM interface, called on its own apartment thread; the out-value is owned by the wrapper.
                if let Ok(class) = unsafe { reg.GetCurrentDataClass() } {
                    c.technology = mbn::technology(class).to_owned();
                }
            }
            if c.operator.is_empty()
                // SAFETY: a live COM interface, called on its own apartment thread; the out-value is owned by the wrapper.
                && let Ok(mut home) = unsafe { iface.GetHomeProvider() }
            {
                c.operator = bstr(&home.providerName);
                // SAFETY: the BSTRs are ours (ManuallyDrop in the struct).
                unsafe {
                    std::mem::ManuallyDrop::drop(&mut home.providerName);
                    std::mem::ManuallyDrop::drop(&mut home.providerID);
                }
            }
            if let Ok(sig) = iface.cast::<IMbnSignal>()
                // SAFETY: a live COM interface, called on its own apartment thread; the out-value is owned by the wrapper.
                && let Ok(asu) = unsafe { sig.GetSignalStrength() }
            {
                c.rssi_dbm = mbn::asu_to_dbm(asu);
            }
            // RSRP, RSRQ and SINR: not offered by the Mobile Broadband API
            // (IMbnSignal has the ASU strength only); left None.
            Ok(c)
        }
    }
}

impl CellularReader {
    /// The platform's modem source on the `modem` thread (module contract).
    /// A good reading stands for `refresh` (`network.cellular_refresh`),
    /// which is also ModemManager's `Setup` rate.
    pub fn start(
        mode: CellularMode,
        timeout: Duration,
        refresh: Duration,
    ) -> Result<CellularReader, String> {
        #[cfg(target_os = "linux")]
        let r = linux::start(
            mode,
            timeout,
            refresh.as_secs().clamp(1, u32::MAX as u64) as u32,
        );
        #[cfg(windows)]
        let r = mbn_com::start(mode, timeout);
        #[cfg(not(any(target_os = "linux", windows)))]
        let r = CellularReader::spawn(mode, timeout, "the modem", || {
            Err(NoModem::Failed(
                "cellular is not read on this platform (network.cellular = \"off\" silences this)"
                    .into(),
            ))
        });
        r.map(|mut r| {
            r.refresh = refresh;
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Seconds the injected clock runs ahead of the real one.
    static SKEW: AtomicU64 = AtomicU64::new(0);

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(SKEW.load(Ordering::SeqCst))
    }

    #[test]
    fn technologies() {
        assert_eq!(technology(0), "");
        assert_eq!(technology(1 << 1), "gsm");
        assert_eq!(technology(1 << 4), "edge");
        assert_eq!(technology((1 << 5) | (1 << 9)), "umts");
        assert_eq!(technology(1 << 11), "cdma");
        assert_eq!(technology(1 << 14), "lte");
        assert_eq!(technology(1 << 16), "lte");
        assert_eq!(technology((1 << 14) | (1 << 15)), "5gnr");
    }

    fn d(kv: &[(&str, f64)]) -> HashMap<String, f64> {
        kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn lte_figures_from_the_lte_dict() {
        let mut p = ModemProps {
            access_technologies: 1 << 14,
            ports: vec![("cdc-wdm0".into(), 6), ("wwan0".into(), 2)],
            operator_name: "".into(),
            operator_code: "310260".into(),
            ..Default::default()
        };
        p.signal.insert("Umts".into(), d(&[("rssi", -70.0)]));
        p.signal.insert(
            "Lte".into(),
            d(&[
                ("rssi", -65.0),
                ("rsrp", -95.4),
                ("rsrq", -11.25),
                ("snr", 7.5),
            ]),
        );
        let c = to_cellular(&p);
        assert_eq!(c.interface, "wwan0");
        assert_eq!(c.technology, "lte");
        assert_eq!(c.operator, "310260");
        assert_eq!(
            (c.rssi_dbm, c.rsrp_dbm, c.rsrq_db_x10, c.sinr_db_x10),
            (Some(-65), Some(-95), Some(-113), Some(75))
        );
    }

    #[test]
    fn another_dict_when_the_current_one_is_empty_and_nonsense_is_dropped() {
        let mut p = ModemProps {
            access_technologies: 1 << 15,
            ..Default::default()
        };
        p.signal.insert("Nr5g".into(), HashMap::new());
        p.signal.insert(
            "Lte".into(),
            d(&[("rsrp", f64::NAN), ("sinr", 1e9), ("rssi", -80.0)]),
        );
        let c = to_cellular(&p);
        assert_eq!(c.technology, "5gnr");
        assert_eq!(
            (c.rssi_dbm, c.rsrp_dbm, c.sinr_db_x10),
            (Some(-80), None, None)
        );
        assert_eq!(figures(&ModemProps::default(), ""), [None; 4]);
    }

    #[test]
    fn modes() {
        let absent = || Err(NoModem::Absent("no ModemManager".into()));
        let failed = || Err(NoModem::Failed("timeout".into()));
        assert_eq!(apply_mode(CellularMode::Auto, absent()), Ok(None));
        assert_eq!(
            apply_mode(CellularMode::Required, absent()),
            Err("no ModemManager".into())
        );
        assert_eq!(
            apply_mode(CellularMode::Auto, failed()),
            Err("timeout".into())
        );
        assert_eq!(apply_mode(CellularMode::Off, failed()), Ok(None));
        assert!(matches!(
            apply_mode(CellularMode::Auto, Ok(Cellular::default())),
            Ok(Some(_))
        ));
    }

    #[test]
    fn the_reader_thread_is_waited_for_at_most_the_timeout() {
        let t = std::time::Duration::from_millis(200);
        let slow = CellularReader::spawn(CellularMode::Auto, t, "the test modem", || {
            Ok(Box::new(|| {
                std::thread::sleep(std::time::Duration::from_secs(2));
                Ok(Cellular::default())
            }))
        })
        .unwrap();
        let started = Instant::now();
        assert_eq!(
            slow.read(),
            Err("the test modem did not answer within 200ms".into())
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));

        let counting = |recheck| {
            let mut n = 0;
            let mut r = CellularReader::spawn(CellularMode::Auto, t, "m", move || {
                Ok(Box::new(move || {
                    n += 1;
                    if n == 1 {
                        Err(NoModem::Absent("no SIM".into()))
                    } else {
                        Ok(Cellular {
                            operator: format!("op{n}"),
                            ..Default::default()
                        })
                    }
                }))
            })
            .unwrap();
            r.absent_recheck = recheck;
            r
        };
        // Absent stands for a while: the next samples do not ask again.
        let c = counting(ABSENT_RECHECK);
        assert_eq!(c.read(), Ok(None));
        assert_eq!(c.read(), Ok(None));
        assert_eq!(c.shared.0.lock().unwrap().generation, 1, "asked once");
        // Once it has stood long enough, the source is asked again.
        let c = counting(Duration::ZERO);
        assert_eq!(c.read(), Ok(None));
        assert_eq!(c.read().unwrap().unwrap().operator, "op2");

        // A good reading stands for the refresh, by the injected clock;
        // a failure does not.
        let mut n = 0;
        let mut c = CellularReader::spawn(CellularMode::Auto, t, "m", move || {
            Ok(Box::new(move || {
                n += 1;
                if n == 2 {
                    Err(NoModem::Failed("bus broke".into()))
                } else {
                    Ok(Cellular {
                        operator: format!("op{n}"),
                        ..Default::default()
                    })
                }
            }))
        })
        .unwrap();
        c.refresh = Duration::from_secs(10);
        c.now = later;
        SKEW.store(0, Ordering::SeqCst);
        let op = |c: &CellularReader| c.read().map(|r| r.unwrap().operator);
        assert_eq!(op(&c), Ok("op1".into()));
        SKEW.store(9, Ordering::SeqCst);
        assert_eq!(op(&c), Ok("op1".into()), "9 s old: reused");
        assert_eq!(c.shared.0.lock().unwrap().generation, 1, "asked once");
        SKEW.store(10, Ordering::SeqCst);
        assert_eq!(op(&c), Err("bus broke".into()), "10 s old: asked again");
        assert_eq!(op(&c), Ok("op3".into()), "a failure is asked again at once");
        assert_eq!(c.shared.0.lock().unwrap().generation, 3);

        let broken = CellularReader::spawn(CellularMode::Required, t, "m", || {
            Err(NoModem::Absent("class not registered".into()))
        })
        .unwrap();
        assert_eq!(broken.read(), Err("class not registered".into()));
    }
}
