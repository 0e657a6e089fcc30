//! The field grammar of threshold rules, and reading a field's value out of
//! a record. See the grammar in the `rules` module documentation.

use muster_proto::{AgentStatus, HostSample, LinkKind, Outcome, ProbeResult, SamplerFamily};

use super::baseline::ValueUnit;

/// Which instance of a list a field looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `[*]`: every instance, each judged on its own.
    Any,
    /// `["name"]`: the one instance of that name.
    Name(String),
}

/// What kind of record a field is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Host,
    Probe,
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuM {
    Total,
    MaxCore,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemM {
    UsedPct,
    UsedMib,
    FreeMib,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskM {
    UsedPct,
    FreeGib,
    ReadBps,
    WriteBps,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetM {
    Up,
    RxErrors,
    TxErrors,
    RxBps,
    TxBps,
}
/// The unit's network context (`net.kind`, no selector).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteM {
    /// The default route's link kind, compared with a kind name.
    Kind,
    SignalDbm,
    VpnUp,
    RouteChanges,
}

/// Metrics of `net` without a selector: the network context.
const ROUTE_METRICS: &[&str] = &["kind", "signal_dbm", "vpn_up", "route_changes"];

/// The unit's traffic over all its interfaces but loopback (`net.rx_bps`,
/// `net.tx_bps`, `net.bps` without a selector): a vehicle roaming from
/// Wi-Fi to cellular moves its traffic between interfaces, its total stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalM {
    RxBps,
    TxBps,
    /// Received plus sent.
    Bps,
}

/// Metrics of `net` without a selector: the unit's totals.
const TOTAL_METRICS: &[&str] = &["rx_bps", "tx_bps", "bps"];

/// Loopback interfaces, left out of the totals: `lo` (Linux), `lo0`
/// (BSD), `Loopback Pseudo-Interface 1` (Windows).
pub fn is_loopback(name: &str) -> bool {
    let b = name.as_bytes();
    name == "lo"
        || (b.len() > 2 && name.starts_with("lo") && b[2..].iter().all(u8::is_ascii_digit))
        || (b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"loopback"))
}

/// The names `net.kind` compares with.
pub const LINK_KINDS: [LinkKind; 5] = [
    LinkKind::Ethernet,
    LinkKind::Wifi,
    LinkKind::Cellular,
    LinkKind::Vpn,
    LinkKind::Other,
];

/// A link kind's value as a threshold (its wire code).
pub fn kind_value(k: LinkKind) -> f64 {
    f64::from(u8::from(k))
}

/// The kind name of a `net.kind` value.
pub fn kind_name(v: f64) -> &'static str {
    LINK_KINDS
        .iter()
        .find(|k| kind_value(**k).to_bits() == v.to_bits())
        .map_or("?", |k| k.as_str())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcM {
    Running,
    Restarts,
    CpuPct,
    RssMib,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostM {
    UptimeS,
    Failures,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeM {
    Ok,
    TotalMs,
    DnsMs,
    ConnectMs,
    TlsMs,
    TtfbMs,
    HttpStatus,
    CertDaysLeft,
    LossPct,
    RttMs,
    FailureRatio,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentM {
    BacklogRecords,
    BacklogMib,
    OldestUnsentS,
    Dropped,
    DroppedNew,
    Reconnects,
    ClockOffsetMs,
}

/// A parsed field.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Cpu(CpuM),
    /// Index 0, 1, 2 = 1, 5, 15 minute load average.
    Load(usize),
    Memory(MemM),
    Swap(MemM),
    Disk(Selector, DiskM),
    Net(Selector, NetM),
    /// `net.kind`, `net.signal_dbm`, `net.vpn_up`, `net.route_changes`.
    Route(RouteM),
    /// `net.rx_bps`, `net.tx_bps`, `net.bps`: totals over the interfaces.
    NetTotal(TotalM),
    Process(Selector, ProcM),
    Host(HostM),
    Probe(Selector, ProbeM),
    Agent(AgentM),
}

/// The metrics of each scope, for the parser and its error messages.
const SCOPES: &[(&str, bool, &[&str])] = &[
    ("cpu", false, &["total", "max_core"]),
    ("load", false, &["1m", "5m", "15m"]),
    ("memory", false, &["used_pct", "used_mib", "free_mib"]),
    ("swap", false, &["used_pct", "used_mib", "free_mib"]),
    (
        "disk",
        true,
        &["used_pct", "free_gib", "read_bps", "write_bps"],
    ),
    (
        "net",
        true,
        &["up", "rx_errors", "tx_errors", "rx_bps", "tx_bps"],
    ),
    (
        "process",
        true,
        &["running", "restarts", "cpu_pct", "rss_mib"],
    ),
    ("host", false, &["uptime_s", "failures"]),
    (
        "probe",
        true,
        &[
            "ok",
            "total_ms",
            "dns_ms",
            "connect_ms",
            "tls_ms",
            "ttfb_ms",
            "http_status",
            "cert_days_left",
            "loss_pct",
            "rtt_ms",
            "failure_ratio",
        ],
    ),
    (
        "agent",
        false,
        &[
            "backlog_records",
            "backlog_mib",
            "oldest_unsent_s",
            "dropped",
            "dropped_new",
            "reconnects",
            "clock_offset_ms",
        ],
    ),
];

impl Field {
    /// Parses `scope[selector].metric`; the error says what is wrong, for
    /// people (the caller adds the config key).
    pub fn parse(text: &str) -> Result<Field, String> {
        let s = text.trim();
        let scope_end = s
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(s.len());
        let scope = &s[..scope_end];
        let Some(&(_, wants_sel, metrics)) = SCOPES.iter().find(|(n, _, _)| *n == scope) else {
            let names: Vec<&str> = SCOPES.iter().map(|(n, _, _)| *n).collect();
            return Err(format!(
                "unknown scope {scope:?}; expected one of {}",
                names.join(", ")
            ));
        };
        let mut rest = &s[scope_end..];
        let mut selector = None;
        if let Some(after) = rest.strip_prefix('[') {
            let (sel, after) = parse_selector(after)?;
            selector = Some(sel);
            rest = after;
        }
        if scope == "net"
            && selector.is_none()
            && let Some(m) = rest.strip_prefix('.')
        {
            return Ok(match m {
                "kind" => Field::Route(RouteM::Kind),
                "signal_dbm" => Field::Route(RouteM::SignalDbm),
                "vpn_up" => Field::Route(RouteM::VpnUp),
                "route_changes" => Field::Route(RouteM::RouteChanges),
                "rx_bps" => Field::NetTotal(TotalM::RxBps),
                "tx_bps" => Field::NetTotal(TotalM::TxBps),
                "bps" => Field::NetTotal(TotalM::Bps),
                _ => {
                    return Err(format!(
                        "unknown metric {m:?} of net; expected one of {} (the network context), \
                         {} (totals over the interfaces), \
                         or net[\"interface\"].metric with one of {}",
                        ROUTE_METRICS.join(", "),
                        TOTAL_METRICS.join(", "),
                        metrics.join(", ")
                    ));
                }
            });
        }
        match (wants_sel, &selector) {
            (true, None) => {
                return Err(format!(
                    "{scope} needs a selector: {scope}[\"name\"].metric or {scope}[*].metric"
                ));
            }
            (false, Some(_)) => return Err(format!("{scope} takes no [selector]")),
            _ => {}
        }
        let Some(metric) = rest.strip_prefix('.') else {
            return Err(format!("expected .metric after {scope}"));
        };
        if !metrics.contains(&metric) {
            return Err(format!(
                "unknown metric {metric:?} of {scope}; expected one of {}",
                metrics.join(", ")
            ));
        }
        let sel = || selector.clone().expect("checked above");
        Ok(match (scope, metric) {
            ("cpu", "total") => Field::Cpu(CpuM::Total),
            ("cpu", _) => Field::Cpu(CpuM::MaxCore),
            ("load", "1m") => Field::Load(0),
            ("load", "5m") => Field::Load(1),
            ("load", _) => Field::Load(2),
            ("memory", m) => Field::Memory(mem_metric(m)),
            ("swap", m) => Field::Swap(mem_metric(m)),
            ("disk", m) => Field::Disk(
                sel(),
                match m {
                    "used_pct" => DiskM::UsedPct,
                    "free_gib" => DiskM::FreeGib,
                    "read_bps" => DiskM::ReadBps,
                    _ => DiskM::WriteBps,
                },
            ),
            ("net", m) => Field::Net(
                sel(),
                match m {
                    "up" => NetM::Up,
                    "rx_errors" => NetM::RxErrors,
                    "tx_errors" => NetM::TxErrors,
                    "rx_bps" => NetM::RxBps,
                    _ => NetM::TxBps,
                },
            ),
            ("process", m) => Field::Process(
                sel(),
                match m {
                    "running" => ProcM::Running,
                    "restarts" => ProcM::Restarts,
                    "cpu_pct" => ProcM::CpuPct,
                    _ => ProcM::RssMib,
                },
            ),
            ("host", "uptime_s") => Field::Host(HostM::UptimeS),
            ("host", _) => Field::Host(HostM::Failures),
            ("probe", m) => Field::Probe(
                sel(),
                match m {
                    "ok" => ProbeM::Ok,
                    "total_ms" => ProbeM::TotalMs,
                    "dns_ms" => ProbeM::DnsMs,
                    "connect_ms" => ProbeM::ConnectMs,
                    "tls_ms" => ProbeM::TlsMs,
                    "ttfb_ms" => ProbeM::TtfbMs,
                    "http_status" => ProbeM::HttpStatus,
                    "cert_days_left" => ProbeM::CertDaysLeft,
                    "loss_pct" => ProbeM::LossPct,
                    "rtt_ms" => ProbeM::RttMs,
                    _ => ProbeM::FailureRatio,
                },
            ),
            (_, m) => Field::Agent(match m {
                "backlog_records" => AgentM::BacklogRecords,
                "backlog_mib" => AgentM::BacklogMib,
                "oldest_unsent_s" => AgentM::OldestUnsentS,
                "dropped" => AgentM::Dropped,
                "dropped_new" => AgentM::DroppedNew,
                "reconnects" => AgentM::Reconnects,
                _ => AgentM::ClockOffsetMs,
            }),
        })
    }

    pub fn source(&self) -> Source {
        match self {
            Field::Probe(..) => Source::Probe,
            Field::Agent(_) => Source::Status,
            _ => Source::Host,
        }
    }

    /// A true/false field: compared with `==` / `!=` against `true` / `false`.
    pub fn is_bool(&self) -> bool {
        matches!(
            self,
            Field::Net(_, NetM::Up)
                | Field::Route(RouteM::VpnUp)
                | Field::Process(_, ProcM::Running)
                | Field::Probe(_, ProbeM::Ok)
        )
    }

    /// `net.kind`: compared with `==` / `!=` against a kind name.
    pub fn is_kind(&self) -> bool {
        matches!(self, Field::Route(RouteM::Kind))
    }

    /// Judged over a window of results rather than the latest one.
    pub fn is_windowed(&self) -> bool {
        matches!(self, Field::Probe(_, ProbeM::FailureRatio))
    }

    /// In milliseconds (a baseline op's `min_delta_ms`).
    pub fn is_ms(&self) -> bool {
        matches!(
            self,
            Field::Probe(
                _,
                ProbeM::TotalMs
                    | ProbeM::DnsMs
                    | ProbeM::ConnectMs
                    | ProbeM::TlsMs
                    | ProbeM::TtfbMs
                    | ProbeM::RttMs
            ) | Field::Agent(AgentM::ClockOffsetMs)
        )
    }

    /// Can be below zero (no baseline op: those judge magnitudes).
    pub fn is_signed(&self) -> bool {
        matches!(
            self,
            Field::Route(RouteM::SignalDbm)
                | Field::Probe(_, ProbeM::CertDaysLeft)
                | Field::Agent(AgentM::ClockOffsetMs)
        )
    }

    /// How its values read in messages.
    pub fn value_unit(&self) -> ValueUnit {
        match self {
            f if f.is_ms() => ValueUnit::Ms,
            Field::Disk(_, DiskM::ReadBps | DiskM::WriteBps)
            | Field::Net(_, NetM::RxBps | NetM::TxBps)
            | Field::NetTotal(_) => ValueUnit::BytesPerSec,
            Field::Cpu(_)
            | Field::Memory(MemM::UsedPct)
            | Field::Swap(MemM::UsedPct)
            | Field::Disk(_, DiskM::UsedPct)
            | Field::Process(_, ProcM::CpuPct)
            | Field::Probe(_, ProbeM::LossPct) => ValueUnit::Percent,
            _ => ValueUnit::Plain,
        }
    }

    /// A field's text with its selector as `[*]` (`probe["cad-api"].total_ms`
    /// is `probe[*].total_ms`): the metric, whatever the instance.
    pub fn any_text(text: &str) -> String {
        let t = text.trim();
        match (t.find('['), t.rfind("].")) {
            (Some(i), Some(j)) if i < j => format!("{}[*].{}", &t[..i], &t[j + 2..]),
            _ => t.to_owned(),
        }
    }

    /// The same metric of every instance (`[*]`), for fields with a selector.
    pub fn with_any(&self) -> Field {
        let mut f = self.clone();
        match &mut f {
            Field::Disk(s, _) | Field::Net(s, _) | Field::Process(s, _) | Field::Probe(s, _) => {
                *s = Selector::Any
            }
            _ => {}
        }
        f
    }

    /// Does this field's selector take the instance `name`, compared as
    /// the scope compares names (drives and processes loosely)? Fields
    /// without a selector take none.
    pub fn selects_instance(&self, name: &str) -> bool {
        match self {
            Field::Disk(Selector::Name(n), _) => same_mount(n, name),
            Field::Process(Selector::Name(n), _) => same_process(n, name),
            Field::Net(Selector::Name(n), _) | Field::Probe(Selector::Name(n), _) => n == name,
            Field::Disk(Selector::Any, _)
            | Field::Process(Selector::Any, _)
            | Field::Net(Selector::Any, _)
            | Field::Probe(Selector::Any, _) => true,
            _ => false,
        }
    }

    pub fn selector(&self) -> Option<&Selector> {
        match self {
            Field::Disk(s, _) | Field::Net(s, _) | Field::Process(s, _) | Field::Probe(s, _) => {
                Some(s)
            }
            _ => None,
        }
    }

    /// The same field with a wildcard resolved to one instance, as text
    /// (`disk["/var"].used_pct` for `disk[*].used_pct`).
    pub fn instance_text(text: &str, instance: &str) -> String {
        let escaped = escape(instance);
        match text.find("[*]") {
            Some(i) => format!("{}[\"{escaped}\"]{}", &text[..i], &text[i + 3..]),
            None => text.to_string(),
        }
    }

    /// Calls `f(instance, value)` for the value(s) of a host field in `s`.
    /// `instance` is the instance's name for a `[*]` selector, `None`
    /// otherwise. Nothing is called when the sample lacks the value (the
    /// agent's collector failed, the instance is not in the sample).
    ///
    /// Returns `false` when the sample has no data for the field's scope at
    /// all (the agent's collector failed): instances missing from it are
    /// then unknown, not gone.
    pub fn host_values(&self, s: &HostSample, mut f: impl FnMut(Option<&str>, f64)) -> bool {
        let failed = |c: SamplerFamily| s.failures.iter().any(|x| x.collector == c);
        let mut one = |v: Option<f64>| match v {
            Some(v) => {
                f(None, v);
                true
            }
            None => false,
        };
        match self {
            Field::Cpu(m) => one(s.cpu.as_ref().and_then(|cpu| match m {
                CpuM::Total => Some(f64::from(cpu.total_bp) / 100.0),
                CpuM::MaxCore => cpu.per_core_pct.iter().max().map(|m| f64::from(*m)),
            })),
            Field::Load(i) => one(s.load_x100.map(|l| f64::from(l[*i]) / 100.0)),
            Field::Memory(m) => one(s
                .memory
                .as_ref()
                .and_then(|mem| mem_value(*m, mem.total_kib, mem.used_kib))),
            Field::Swap(m) => one(s
                .memory
                .as_ref()
                .and_then(|mem| mem_value(*m, mem.swap_total_kib, mem.swap_used_kib))),
            Field::Disk(sel, m) => {
                if failed(SamplerFamily::Disks) {
                    return false;
                }
                for d in &s.disks {
                    let v = match m {
                        DiskM::UsedPct if d.total_kib == 0 => continue,
                        DiskM::UsedPct => d.used_kib as f64 * 100.0 / d.total_kib as f64,
                        DiskM::FreeGib => {
                            d.total_kib.saturating_sub(d.used_kib) as f64 / (1024.0 * 1024.0)
                        }
                        DiskM::ReadBps => d.read_bps as f64,
                        DiskM::WriteBps => d.write_bps as f64,
                    };
                    if !visit(sel, &d.mount, same_mount, v, &mut f) {
                        break;
                    }
                }
                true
            }
            Field::Net(sel, m) => {
                if failed(SamplerFamily::Networks) {
                    return false;
                }
                for n in &s.nets {
                    let v = match m {
                        NetM::Up => bool_value(n.up),
                        NetM::RxErrors => f64::from(n.rx_errors),
                        NetM::TxErrors => f64::from(n.tx_errors),
                        NetM::RxBps => n.rx_bps as f64,
                        NetM::TxBps => n.tx_bps as f64,
                    };
                    if !visit(sel, &n.name, |a, b| a == b, v, &mut f) {
                        break;
                    }
                }
                true
            }
            Field::Process(sel, m) => {
                if failed(SamplerFamily::Processes) {
                    return false;
                }
                for p in &s.processes {
                    let v = match m {
                        ProcM::Running => bool_value(p.running),
                        ProcM::Restarts => f64::from(p.restarts),
                        ProcM::CpuPct => f64::from(p.cpu_bp) / 100.0,
                        ProcM::RssMib => p.rss_kib as f64 / 1024.0,
                    };
                    if !visit(sel, &p.name, same_process, v, &mut f) {
                        break;
                    }
                }
                true
            }
            Field::Host(HostM::UptimeS) => {
                !failed(SamplerFamily::Uptime) && one(Some(s.uptime_s as f64))
            }
            Field::Host(HostM::Failures) => one(Some(s.failures.len() as f64)),
            Field::NetTotal(m) => {
                if failed(SamplerFamily::Networks) {
                    return false;
                }
                let mut total: Option<f64> = None;
                for n in s.nets.iter().filter(|n| !is_loopback(&n.name)) {
                    let v = match m {
                        TotalM::RxBps => n.rx_bps as f64,
                        TotalM::TxBps => n.tx_bps as f64,
                        TotalM::Bps => n.rx_bps as f64 + n.tx_bps as f64,
                    };
                    *total.get_or_insert(0.0) += v;
                }
                one(total)
            }
            Field::Route(m) => {
                let family = match m {
                    RouteM::Kind | RouteM::RouteChanges => SamplerFamily::Route,
                    RouteM::SignalDbm => match s.network.as_ref().and_then(|n| n.route.as_ref()) {
                        Some(r) if r.kind == LinkKind::Wifi => SamplerFamily::Wifi,
                        _ => SamplerFamily::Cellular,
                    },
                    RouteM::VpnUp => SamplerFamily::Vpn,
                };
                let Some(n) = s.network.as_deref() else {
                    return false;
                };
                if failed(family) {
                    return false;
                }
                one(match m {
                    RouteM::Kind => n.route.as_ref().map(|r| kind_value(r.kind)),
                    RouteM::SignalDbm => n.route_signal_dbm().map(f64::from),
                    RouteM::VpnUp => n.vpn_up().map(bool_value),
                    RouteM::RouteChanges => Some(f64::from(n.route_changes)),
                })
            }
            Field::Probe(..) | Field::Agent(_) => false,
        }
    }

    /// The value of a probe field for one (latest) result, when the result
    /// has it. Timings are only read from successful results: a failure's
    /// timing is its timeout, which `failure_ratio` / `ok` judge instead.
    /// `failure_ratio` is windowed and computed by the caller.
    pub fn probe_value(m: ProbeM, p: &ProbeResult) -> Option<f64> {
        let ok = p.outcome == Outcome::Ok;
        let ms = |us: Option<u32>| us.filter(|_| ok).map(|us| f64::from(us) / 1000.0);
        match m {
            ProbeM::Ok => Some(bool_value(ok)),
            ProbeM::TotalMs => ms(Some(p.phases.total_us)),
            ProbeM::DnsMs => ms(p.phases.dns_us),
            ProbeM::ConnectMs => ms(p.phases.connect_us),
            ProbeM::TlsMs => ms(p.phases.tls_us),
            ProbeM::TtfbMs => ms(p.phases.ttfb_us),
            ProbeM::HttpStatus => p.status.map(f64::from),
            ProbeM::CertDaysLeft => p.cert_days_left.map(f64::from),
            ProbeM::LossPct => p
                .icmp
                .filter(|i| i.sent > 0)
                .map(|i| f64::from(i.lost) * 100.0 / f64::from(i.sent)),
            ProbeM::RttMs => p
                .icmp
                .and_then(|i| i.avg_us)
                .map(|us| f64::from(us) / 1000.0),
            ProbeM::FailureRatio => None,
        }
    }

    /// The value of an agent field. `prev_dropped` is the unit's previous
    /// cumulative drop count (for `dropped_new`).
    pub fn agent_value(m: AgentM, s: &AgentStatus, prev_dropped: Option<u64>) -> Option<f64> {
        Some(match m {
            AgentM::BacklogRecords => s.backlog_records as f64,
            AgentM::BacklogMib => s.backlog_bytes as f64 / (1024.0 * 1024.0),
            AgentM::OldestUnsentS => s.oldest_unsent_ms? as f64 / 1000.0,
            AgentM::Dropped => s.dropped.total() as f64,
            AgentM::DroppedNew => {
                // A buffer moved aside starts again at zero: count what it has.
                let now = s.dropped.total();
                match prev_dropped {
                    None => 0.0,
                    Some(p) if now >= p => (now - p) as f64,
                    Some(_) => now as f64,
                }
            }
            AgentM::Reconnects => f64::from(s.reconnects),
            AgentM::ClockOffsetMs => s.clock_offset_ms? as f64,
        })
    }
}

fn mem_metric(m: &str) -> MemM {
    match m {
        "used_pct" => MemM::UsedPct,
        "used_mib" => MemM::UsedMib,
        _ => MemM::FreeMib,
    }
}

fn mem_value(m: MemM, total_kib: u64, used_kib: u64) -> Option<f64> {
    match m {
        MemM::UsedPct if total_kib == 0 => None,
        MemM::UsedPct => Some(used_kib as f64 * 100.0 / total_kib as f64),
        MemM::UsedMib => Some(used_kib as f64 / 1024.0),
        MemM::FreeMib => Some(total_kib.saturating_sub(used_kib) as f64 / 1024.0),
    }
}

/// `true` is 1, `false` is 0.
pub fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Hands one instance's value to `f` if the selector takes it. Returns
/// `false` once a named selector has found its instance (stop looking).
fn visit(
    sel: &Selector,
    name: &str,
    same: impl Fn(&str, &str) -> bool,
    v: f64,
    f: &mut impl FnMut(Option<&str>, f64),
) -> bool {
    match sel {
        Selector::Any => {
            f(Some(name), v);
            true
        }
        Selector::Name(want) if same(want, name) => {
            f(None, v);
            false
        }
        Selector::Name(_) => true,
    }
}

/// Does a selector name this instance? `[*]` takes every one.
pub fn selects(sel: &Selector, name: &str) -> bool {
    match sel {
        Selector::Any => true,
        Selector::Name(n) => n == name,
    }
}

/// Mount points compare exactly, except Windows drives: `C:`, `C:\`, `c:/`
/// are the same drive.
pub fn same_mount(a: &str, b: &str) -> bool {
    fn drive(s: &str) -> Option<u8> {
        let b = s.as_bytes();
        let ok = (b.len() == 2 || (b.len() == 3 && matches!(b[2], b'\\' | b'/')))
            && b[0].is_ascii_alphabetic()
            && b[1] == b':';
        ok.then(|| b[0].to_ascii_uppercase())
    }
    match (drive(a), drive(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Process names compare as the agent matches them: case-insensitively and
/// without a `.exe` suffix (`cadclient` is `CadClient.exe`).
pub fn same_process(a: &str, b: &str) -> bool {
    fn base(s: &str) -> &str {
        let n = s.len();
        if n > 4 && s.is_char_boundary(n - 4) && s[n - 4..].eq_ignore_ascii_case(".exe") {
            &s[..n - 4]
        } else {
            s
        }
    }
    base(a).eq_ignore_ascii_case(base(b))
}

/// `["name"]` or `[*]`, after the `[`. Inside the quotes `\\` is a backslash
/// and `\"` a quote.
fn parse_selector(s: &str) -> Result<(Selector, &str), String> {
    if let Some(rest) = s.strip_prefix("*]") {
        return Ok((Selector::Any, rest));
    }
    let Some(body) = s.strip_prefix('"') else {
        return Err("a selector is [\"name\"] or [*]".into());
    };
    let mut name = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e @ ('\\' | '"'))) => name.push(e),
                _ => return Err("in a selector, \\ must be followed by \\ or \"".into()),
            },
            '"' => {
                let Some(rest) = body[i + 1..].strip_prefix(']') else {
                    return Err("expected ] after the selector's closing quote".into());
                };
                if name.is_empty() {
                    return Err("empty selector name".into());
                }
                return Ok((Selector::Name(name), rest));
            }
            c => name.push(c),
        }
    }
    Err("unterminated selector: missing closing quote".into())
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::fixtures;

    #[test]
    fn grammar_table() {
        let ok: &[(&str, Field)] = &[
            ("cpu.total", Field::Cpu(CpuM::Total)),
            ("load.5m", Field::Load(1)),
            ("memory.used_pct", Field::Memory(MemM::UsedPct)),
            ("swap.used_pct", Field::Swap(MemM::UsedPct)),
            (
                r#"disk["C:\\"].used_pct"#,
                Field::Disk(Selector::Name("C:\\".into()), DiskM::UsedPct),
            ),
            (
                "disk[*].used_pct",
                Field::Disk(Selector::Any, DiskM::UsedPct),
            ),
            (
                r#"net["wwan0"].rx_errors"#,
                Field::Net(Selector::Name("wwan0".into()), NetM::RxErrors),
            ),
            (
                r#"process["cadclient"].running"#,
                Field::Process(Selector::Name("cadclient".into()), ProcM::Running),
            ),
            ("net.kind", Field::Route(RouteM::Kind)),
            ("net.signal_dbm", Field::Route(RouteM::SignalDbm)),
            ("net.vpn_up", Field::Route(RouteM::VpnUp)),
            ("net.route_changes", Field::Route(RouteM::RouteChanges)),
            ("net.rx_bps", Field::NetTotal(TotalM::RxBps)),
            ("net.tx_bps", Field::NetTotal(TotalM::TxBps)),
            ("net.bps", Field::NetTotal(TotalM::Bps)),
            (
                r#"probe["cad-api"].failure_ratio"#,
                Field::Probe(Selector::Name("cad-api".into()), ProbeM::FailureRatio),
            ),
            (
                r#"probe["a \"q\""].ttfb_ms"#,
                Field::Probe(Selector::Name("a \"q\"".into()), ProbeM::TtfbMs),
            ),
            (
                "agent.backlog_records",
                Field::Agent(AgentM::BacklogRecords),
            ),
        ];
        for (text, want) in ok {
            assert_eq!(&Field::parse(text).unwrap(), want, "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("cpux.total", "unknown scope \"cpux\""),
            ("cpu.totl", "unknown metric \"totl\" of cpu"),
            ("disk.used_pct", "disk needs a selector"),
            ("cpu[*].total", "cpu takes no [selector]"),
            (r#"disk["/].used_pct"#, "unterminated selector"),
            (r#"disk["/"used_pct"#, "expected ] after"),
            (r#"disk[""].used_pct"#, "empty selector"),
            ("disk[/].used_pct", "a selector is"),
            (r#"disk["/"]used_pct"#, "expected .metric"),
            ("", "unknown scope"),
        ];
        for (text, want) in bad {
            let e = Field::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn instance_text_escapes() {
        assert_eq!(
            Field::instance_text("disk[*].used_pct", "C:\\"),
            r#"disk["C:\\"].used_pct"#
        );
        let t = Field::instance_text("disk[*].used_pct", "C:\\");
        assert_eq!(
            Field::parse(&t).unwrap(),
            Field::Disk(Selector::Name("C:\\".into()), DiskM::UsedPct)
        );
    }

    fn host(field: &str, s: &HostSample) -> Vec<(Option<String>, f64)> {
        let mut out = Vec::new();
        Field::parse(field)
            .unwrap()
            .host_values(s, |i, v| out.push((i.map(str::to_string), v)));
        out
    }

    #[test]
    fn host_values_in_units() {
        let s = fixtures::host_sample();
        assert_eq!(host("cpu.total", &s), vec![(None, 23.15)]);
        assert_eq!(host("cpu.max_core", &s), vec![(None, 40.0)]);
        assert_eq!(host("load.1m", &s), vec![(None, 0.84)]);
        let mem = host("memory.used_pct", &s)[0].1;
        assert!((mem - 55.667).abs() < 0.01, "{mem}");
        let disk = host(r#"disk["/"].used_pct"#, &s);
        assert_eq!(disk.len(), 1);
        assert!((disk[0].1 - 40.49).abs() < 0.01);
        let any = host("disk[*].used_pct", &s);
        assert_eq!(any.len(), 2);
        assert_eq!(any[1].0.as_deref(), Some("/var"));
        assert_eq!(host(r#"net["wwan0"].rx_errors"#, &s), vec![(None, 2.0)]);
        assert_eq!(
            host(r#"process["cadupdater"].running"#, &s),
            vec![(None, 0.0)]
        );
        assert_eq!(
            host(r#"process["cadclient"].running"#, &s),
            vec![(None, 1.0)]
        );
        assert_eq!(host(r#"process["nope"].running"#, &s), vec![]);
        let mut failed = s.clone();
        failed.failures.push(muster_proto::SamplerFailure {
            collector: SamplerFamily::Disks,
            reason: "statvfs failed".into(),
        });
        assert_eq!(host("disk[*].used_pct", &failed), vec![]);
        failed.cpu = None;
        assert_eq!(host("cpu.total", &failed), vec![]);
    }

    #[test]
    fn net_totals_leave_out_loopback() {
        let mut s = fixtures::host_sample();
        // eth0 (down, 0), wlan0 1532 / 804, wwan0 20480 / 6144.
        assert_eq!(host("net.rx_bps", &s), vec![(None, 22_012.0)]);
        assert_eq!(host("net.tx_bps", &s), vec![(None, 6_948.0)]);
        assert_eq!(host("net.bps", &s), vec![(None, 28_960.0)]);
        for lo in ["lo", "lo0", "Loopback Pseudo-Interface 1"] {
            let mut t = s.clone();
            t.nets.push(muster_proto::NetIf {
                name: lo.into(),
                up: true,
                rx_bps: 1_000_000,
                tx_bps: 1_000_000,
                ..Default::default()
            });
            assert_eq!(host("net.bps", &t), vec![(None, 28_960.0)], "{lo}");
        }
        for name in ["log0", "lo-bridge", "wlan0", "local"] {
            assert!(!is_loopback(name), "{name}");
        }
        // No interface but loopback, or the family failed: no value.
        s.nets.retain(|n| n.name == "eth0");
        s.nets[0].name = "lo".into();
        assert_eq!(host("net.bps", &s), vec![]);
        let mut f = fixtures::host_sample();
        f.failures.push(muster_proto::SamplerFailure {
            collector: SamplerFamily::Networks,
            reason: "no /proc".into(),
        });
        assert_eq!(host("net.bps", &f), vec![]);
        // The baseline helpers.
        let t = Field::parse("net.bps").unwrap();
        assert_eq!(t.value_unit(), ValueUnit::BytesPerSec);
        let p = Field::parse(r#"probe["cad-api"].total_ms"#).unwrap();
        assert!(p.is_ms() && !p.is_signed());
        assert_eq!(p.with_any(), Field::parse("probe[*].total_ms").unwrap());
        assert!(p.selects_instance("cad-api") && !p.selects_instance("cad-ap"));
        let d = Field::parse(r#"disk["C:"].read_bps"#).unwrap();
        assert!(d.selects_instance("c:\\"));
        assert!(Field::parse("net.signal_dbm").unwrap().is_signed());
    }

    #[test]
    fn process_names_match_like_the_agent() {
        for (a, b, same) in [
            ("cadclient", "cadclient", true),
            ("cadclient", "CadClient.exe", true),
            ("CADCLIENT.EXE", "cadclient", true),
            ("cadclient", "cadclient2", false),
            ("cad", "cadclient", false),
            (".exe", ".exe", true),
        ] {
            assert_eq!(same_process(a, b), same, "{a} {b}");
        }
        let mut s = fixtures::host_sample();
        s.processes[0].name = "CadClient.exe".into();
        assert_eq!(
            host(r#"process["cadclient"].running"#, &s),
            vec![(None, 1.0)]
        );
    }

    #[test]
    fn windows_drives_match_loosely() {
        for (a, b, same) in [
            ("C:", "C:\\", true),
            ("c:/", "C:\\", true),
            ("C:", "D:\\", false),
            ("/", "/", true),
            ("/var", "/var/", false),
        ] {
            assert_eq!(same_mount(a, b), same, "{a} {b}");
        }
    }

    #[test]
    fn probe_and_agent_values() {
        let p = fixtures::http_probe();
        assert_eq!(Field::probe_value(ProbeM::TotalMs, &p), Some(146.9));
        assert_eq!(Field::probe_value(ProbeM::TtfbMs, &p), Some(45.5));
        assert_eq!(Field::probe_value(ProbeM::Ok, &p), Some(1.0));
        let f = fixtures::icmp_probe_failed();
        assert_eq!(Field::probe_value(ProbeM::LossPct, &f), Some(100.0));
        assert_eq!(Field::probe_value(ProbeM::TotalMs, &f), None);
        assert_eq!(Field::probe_value(ProbeM::Ok, &f), Some(0.0));
        let s = fixtures::status();
        assert_eq!(Field::agent_value(AgentM::Dropped, &s, None), Some(13.0));
        assert_eq!(Field::agent_value(AgentM::DroppedNew, &s, None), Some(0.0));
        assert_eq!(
            Field::agent_value(AgentM::DroppedNew, &s, Some(10)),
            Some(3.0)
        );
        assert_eq!(
            Field::agent_value(AgentM::DroppedNew, &s, Some(50)),
            Some(13.0)
        );
        assert_eq!(
            Field::agent_value(AgentM::OldestUnsentS, &s, None),
            Some(7200.0)
        );
    }
}
