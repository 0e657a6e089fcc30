//! Windows halves of the network context families (issue 12): the adapter
//! list (`GetAdaptersAddresses`), the default route (`GetBestInterfaceEx`
//! towards a public address: no packet is sent) and Wi-Fi (WLAN API).
//! Every buffer is bounded; every OS error becomes a reason a person can
//! act on. Pure mapping of `IfType` lives in [`super::route::if_type_kind`].

use muster_proto::{DefaultRoute, Wifi};
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_SERVER, GAA_FLAG_SKIP_MULTICAST,
    GAA_FLAG_SKIP_UNICAST, GetAdaptersAddresses, GetBestInterfaceEx, IP_ADAPTER_ADDRESSES_LH,
};
use windows_sys::Win32::NetworkManagement::Ndis::IfOperStatusUp;
use windows_sys::Win32::NetworkManagement::WiFi::{
    WLAN_CONNECTION_ATTRIBUTES, WLAN_INTERFACE_INFO_LIST, WlanCloseHandle, WlanEnumInterfaces,
    WlanFreeMemory, WlanOpenHandle, WlanQueryInterface, wlan_interface_state_connected,
    wlan_intf_opcode_current_connection, wlan_intf_opcode_rssi,
};
use windows_sys::Win32::Networking::WinSock::{AF_INET, AF_UNSPEC, SOCKADDR, SOCKADDR_IN};

/// One network adapter.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub index: u32,
    /// `{GUID}`: the adapter name, which the WLAN API knows it by.
    pub guid: String,
    pub friendly_name: String,
    pub description: String,
    pub if_type: u32,
    pub up: bool,
}

/// A NUL-terminated UTF-16 string, at most 256 units.
unsafe fn wide(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut n = 0;
    // SAFETY: the OS hands out NUL-terminated strings; we stop at 256 units.
    while n < 256 && unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: the first `n` units were just read (above) and are valid.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}

pub fn adapters() -> Result<Vec<Adapter>, String> {
    let flags = GAA_FLAG_SKIP_UNICAST
        | GAA_FLAG_SKIP_ANYCAST
        | GAA_FLAG_SKIP_MULTICAST
        | GAA_FLAG_SKIP_DNS_SERVER;
    let mut size: u32 = 16 * 1024;
    for _ in 0..3 {
        // u64 elements: the buffer is 8-aligned for IP_ADAPTER_ADDRESSES_LH.
        let mut buf = vec![0u64; (size as usize).div_ceil(8)];
        let head = buf.as_mut_ptr().cast::<IP_ADAPTER_ADDRESSES_LH>();
        // SAFETY: buf holds `size` bytes; the OS writes at most that.
        let rc = unsafe {
            GetAdaptersAddresses(AF_UNSPEC as u32, flags, std::ptr::null(), head, &mut size)
        };
        const ERROR_BUFFER_OVERFLOW: u32 = 111;
        const ERROR_NO_DATA: u32 = 232;
        match rc {
            0 => {}
            ERROR_BUFFER_OVERFLOW if size <= 1024 * 1024 => continue,
            ERROR_NO_DATA => return Ok(Vec::new()),
            e => return Err(format!("GetAdaptersAddresses failed: error {e}")),
        }
        let mut out = Vec::new();
        let mut p = head as *const IP_ADAPTER_ADDRESSES_LH;
        while !p.is_null() && out.len() < 256 {
            // SAFETY: a linked list inside buf, as GetAdaptersAddresses filled it.
            let a = unsafe { &*p };
            let guid = if a.AdapterName.is_null() {
                String::new()
            } else {
                // SAFETY: AdapterName is a NUL-terminated ANSI string.
                unsafe { std::ffi::CStr::from_ptr(a.AdapterName.cast()) }
                    .to_string_lossy()
                    .into_owned()
            };
            out.push(Adapter {
                // SAFETY: the union's IfIndex view is always valid.
                index: unsafe { a.Anonymous1.Anonymous.IfIndex },
                guid,
                // SAFETY: NUL-terminated wide strings owned by buf.
                friendly_name: unsafe { wide(a.FriendlyName) },
                // SAFETY: likewise.
                description: unsafe { wide(a.Description) },
                if_type: a.IfType,
                up: a.OperStatus == IfOperStatusUp,
            });
            p = a.Next;
        }
        return Ok(out);
    }
    Err("GetAdaptersAddresses: the adapter list keeps growing".into())
}

pub fn default_route() -> Result<Option<DefaultRoute>, String> {
    // 192.0.2.1 would be TEST-NET; a public address picks the default route.
    let dest = SOCKADDR_IN {
        sin_family: AF_INET,
        sin_port: 0,
        sin_addr: windows_sys::Win32::Networking::WinSock::IN_ADDR {
            S_un: windows_sys::Win32::Networking::WinSock::IN_ADDR_0 {
                S_addr: u32::from_ne_bytes([1, 1, 1, 1]),
            },
        },
        sin_zero: [0; 8],
    };
    let mut index = 0u32;
    // SAFETY: a SOCKADDR_IN passed as SOCKADDR, as the API expects for AF_INET.
    let rc =
        unsafe { GetBestInterfaceEx((&dest as *const SOCKADDR_IN).cast::<SOCKADDR>(), &mut index) };
    const ERROR_NETWORK_UNREACHABLE: u32 = 1231;
    const ERROR_HOST_UNREACHABLE: u32 = 1232;
    match rc {
        0 => {}
        ERROR_NETWORK_UNREACHABLE | ERROR_HOST_UNREACHABLE => return Ok(None),
        e => return Err(format!("GetBestInterfaceEx failed: error {e}")),
    }
    let a = adapters()?
        .into_iter()
        .find(|a| a.index == index)
        .ok_or_else(|| format!("the best interface (index {index}) is not in the adapter list"))?;
    Ok(Some(DefaultRoute {
        kind: super::route::if_type_kind(a.if_type),
        interface: a.friendly_name,
    }))
}

fn guid_string(g: &windows_sys::core::GUID) -> String {
    format!(
        "{{{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}}}",
        g.data1,
        g.data2,
        g.data3,
        g.data4[0],
        g.data4[1],
        g.data4[2],
        g.data4[3],
        g.data4[4],
        g.data4[5],
        g.data4[6],
        g.data4[7]
    )
}

struct Wlan(HANDLE);

impl Drop for Wlan {
    fn drop(&mut self) {
        // SAFETY: a handle WlanOpenHandle returned.
        unsafe { WlanCloseHandle(self.0, std::ptr::null()) };
    }
}

pub fn wifi(route_if: Option<&str>) -> Result<Option<Wifi>, String> {
    let mut version = 0u32;
    let mut h: HANDLE = std::ptr::null_mut();
    // SAFETY: out-pointers to locals.
    let rc = unsafe { WlanOpenHandle(2, std::ptr::null(), &mut version, &mut h) };
    const ERROR_SERVICE_NOT_ACTIVE: u32 = 1062;
    match rc {
        0 => {}
        // No WLAN service: no Wi-Fi hardware on this machine.
        ERROR_SERVICE_NOT_ACTIVE => return Ok(None),
        e => {
            return Err(format!(
                "WlanOpenHandle failed: error {e} (is the WLAN AutoConfig service running?)"
            ));
        }
    }
    let wlan = Wlan(h);
    let mut list: *mut WLAN_INTERFACE_INFO_LIST = std::ptr::null_mut();
    // SAFETY: out-pointer; freed with WlanFreeMemory below.
    let rc = unsafe { WlanEnumInterfaces(wlan.0, std::ptr::null(), &mut list) };
    if rc != 0 || list.is_null() {
        return Err(format!("WlanEnumInterfaces failed: error {rc}"));
    }
    let adapters = adapters().unwrap_or_default();
    let mut found: Vec<Wifi> = Vec::new();
    // SAFETY: the list as the WLAN API returned it: dwNumberOfItems entries.
    unsafe {
        let n = ((*list).dwNumberOfItems as usize).min(16);
        let items = std::ptr::addr_of!((*list).InterfaceInfo)
            .cast::<windows_sys::Win32::NetworkManagement::WiFi::WLAN_INTERFACE_INFO>();
        for i in 0..n {
            let info = &*items.add(i);
            if info.isState != wlan_interface_state_connected {
                continue;
            }
            let mut size = 0u32;
            let mut data: *mut core::ffi::c_void = std::ptr::null_mut();
            let rc = WlanQueryInterface(
                wlan.0,
                &info.InterfaceGuid,
                wlan_intf_opcode_current_connection,
                std::ptr::null(),
                &mut size,
                &mut data,
                std::ptr::null_mut(),
            );
            if rc != 0
                || data.is_null()
                || (size as usize) < std::mem::size_of::<WLAN_CONNECTION_ATTRIBUTES>()
            {
                if !data.is_null() {
                    WlanFreeMemory(data);
                }
                continue;
            }
            let attrs = &*(data as *const WLAN_CONNECTION_ATTRIBUTES);
            let ssid = &attrs.wlanAssociationAttributes.dot11Ssid;
            let ssid = String::from_utf8_lossy(&ssid.ucSSID[..(ssid.uSSIDLength as usize).min(32)])
                .into_owned();
            let quality = attrs.wlanAssociationAttributes.wlanSignalQuality;
            WlanFreeMemory(data);
            let mut rssi: Option<i16> = None;
            let mut data: *mut core::ffi::c_void = std::ptr::null_mut();
            let rc = WlanQueryInterface(
                wlan.0,
                &info.InterfaceGuid,
                wlan_intf_opcode_rssi,
                std::ptr::null(),
                &mut size,
                &mut data,
                std::ptr::null_mut(),
            );
            if rc == 0 && !data.is_null() && size >= 4 {
                let v = *(data as *const i32);
                if (-200..0).contains(&v) {
                    rssi = Some(v as i16);
                }
            }
            if !data.is_null() {
                WlanFreeMemory(data);
            }
            // Without an RSSI: signal quality 0..100 maps linearly to -100..-50 dBm.
            let signal = rssi.or_else(|| (quality <= 100).then(|| (quality as i16) / 2 - 100));
            let g = guid_string(&info.InterfaceGuid);
            let name = adapters
                .iter()
                .find(|a| a.guid.eq_ignore_ascii_case(&g))
                .map(|a| a.friendly_name.clone())
                .unwrap_or_else(|| wide(info.strInterfaceDescription.as_ptr()));
            found.push(Wifi {
                interface: name,
                ssid,
                signal_dbm: signal,
            });
        }
        WlanFreeMemory(list.cast());
    }
    found.sort_by(|a, b| a.interface.cmp(&b.interface));
    Ok(
        match found
            .iter()
            .position(|w| Some(w.interface.as_str()) == route_if)
        {
            Some(i) => Some(found.swap_remove(i)),
            None => found.into_iter().next(),
        },
    )
}
