//! The agent's objects: the MIB-II system group and the ENERGIS enterprise tree
//! (1.3.6.1.4.1.19865), with the OIDs and value formats of the real PDU so scripts written for
//! it work unchanged (see docs/interfaces.md §5.2).
//!
//! Every object is a scalar (`.0` instance). [`Object::iter`] yields them in strictly increasing
//! OID order, which is what GetNext walks (the real ENERGIS walks its table order instead, so a
//! plain `snmpwalk` there needs `-Cc`; here it does not). Values are read from a
//! [`Snapshot`]; writes are validated here and turned into [`SwitchRequest`]s by the agent.
use core::fmt::Write as _;

use heapless::String;

use super::ber::Oid;
use crate::pdu::frontend::{OcpState, Snapshot};
use crate::pdu::{CHANNELS, Outlet, Source, SwitchOp, SwitchRequest};

/// `sysDescr.0`.
pub const SYS_DESCR: &str = "ENERGIS 10IN MANAGED PDU";
/// `sysContact.0` (the real firmware hard-codes its author's address; ours is neutral).
pub const SYS_CONTACT: &str = "ENERGIS PDU administrator";
/// `sysServices.0`: layers 4 (end-to-end) and 7 (applications), as on the real device.
pub const SYS_SERVICES: i32 = 72;
/// `.19865.1.0`, kept from the WIZnet example table the real firmware still carries.
pub const LONG_OID_TEST: &str = "long-length OID Test #1";
/// The ENERGIS enterprise arc.
pub const ENTERPRISE: u32 = 19865;

const SYSTEM_PREFIX: [u32; 7] = [1, 3, 6, 1, 2, 1, 1];
const ENTERPRISE_PREFIX: [u32; 7] = [1, 3, 6, 1, 4, 1, ENTERPRISE];

/// Number of objects.
pub const OBJECT_COUNT: usize = 7 + 1 + CHANNELS + 2 + RAILS as usize + 5 + CHANNELS * 6 + 11;
const RAILS: u8 = 11;

/// One scalar object of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Object {
    /// `1.3.6.1.2.1.1.N.0`, N = 1..=7 (sysDescr … sysServices).
    System(u8),
    /// `.19865.1.0`.
    LongOidTest,
    /// `.19865.2.N.0`: outlet N, INTEGER 0/1, read-write.
    Outlet(Outlet),
    /// `.19865.2.9.0`: SET 1 switches every outlet off. Reads 0.
    AllOff,
    /// `.19865.2.10.0`: SET 1 switches every outlet on. Reads 0.
    AllOn,
    /// `.19865.3.N.0`, N = 1..=11: power-rail and die-sensor values as strings.
    Rail(u8),
    /// `.19865.4.N.0`, N = 1..=5: IP, mask, gateway, DNS, MAC as strings.
    Network(u8),
    /// `.19865.5.C.M.0`: channel C measurement M (1 V, 2 A, 3 W, 4 PF, 5 kWh, 6 uptime s).
    Meter(Outlet, u8),
    /// `.19865.6.N.0`, N = 1..=11: over-current protection; 11 is the writable `ocpReset`.
    Ocp(u8),
}

/// Whether an object accepts SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Access {
    /// GET only.
    ReadOnly,
    /// GET and SET.
    ReadWrite,
}

/// A value read from an object; strings are formatted into a bounded buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MibValue {
    /// INTEGER.
    Integer(i32),
    /// OCTET STRING (ASCII).
    Text(String<48>),
    /// OBJECT IDENTIFIER.
    ObjectId(Oid),
    /// TimeTicks.
    TimeTicks(u32),
}

/// Why a SET value is refused (mapped to v1/v2c error statuses by the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SetRefusal {
    /// The object is read-only.
    NotWritable,
    /// The value is not an INTEGER.
    WrongType,
    /// The INTEGER's encoding is invalid or too long.
    WrongEncoding,
    /// The INTEGER is out of range (outlets and allOn/allOff take 0 or 1).
    WrongValue,
}

/// An accepted SET: the value to echo and what to ask SwitchTask, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetPlan {
    /// The INTEGER written.
    pub value: i32,
    /// The switch operation, or `None` for a write that does nothing (allOff = 0, …).
    pub request: Option<SwitchRequest>,
}

impl Object {
    /// The `i`-th object in OID order.
    pub fn nth(i: usize) -> Option<Object> {
        let small = |n: usize| u8::try_from(n).ok();
        match i {
            0..7 => Some(Object::System(small(i + 1)?)),
            7 => Some(Object::LongOidTest),
            8..16 => Outlet::from_index(i - 8).map(Object::Outlet),
            16 => Some(Object::AllOff),
            17 => Some(Object::AllOn),
            18..29 => Some(Object::Rail(small(i - 17)?)),
            29..34 => Some(Object::Network(small(i - 28)?)),
            34..82 => {
                let k = i - 34;
                Some(Object::Meter(Outlet::from_index(k / 6)?, small(k % 6 + 1)?))
            }
            82..93 => Some(Object::Ocp(small(i - 81)?)),
            _ => None,
        }
    }

    /// Every object, in strictly increasing OID order.
    pub fn iter() -> impl Iterator<Item = Object> {
        (0..OBJECT_COUNT).filter_map(Object::nth)
    }

    /// The object's instance OID.
    pub fn oid(self) -> Oid {
        let mut arcs = [0u32; 12];
        let prefix = match self {
            Object::System(_) => SYSTEM_PREFIX,
            _ => ENTERPRISE_PREFIX,
        };
        arcs[..7].copy_from_slice(&prefix);
        let tail: &[u32] = match self {
            Object::System(n) => &[n as u32, 0],
            Object::LongOidTest => &[1, 0],
            Object::Outlet(o) => &[2, o.number() as u32, 0],
            Object::AllOff => &[2, 9, 0],
            Object::AllOn => &[2, 10, 0],
            Object::Rail(n) => &[3, n as u32, 0],
            Object::Network(n) => &[4, n as u32, 0],
            Object::Meter(o, m) => &[5, o.number() as u32, m as u32, 0],
            Object::Ocp(n) => &[6, n as u32, 0],
        };
        let len = 7 + tail.len();
        arcs[7..len].copy_from_slice(tail);
        Oid::from_arcs(&arcs[..len]).unwrap_or(Oid::EMPTY)
    }

    /// The object whose instance OID is exactly `oid`.
    pub fn find(oid: &Oid) -> Option<Object> {
        Object::iter().find(|o| o.oid() == *oid)
    }

    /// The first object whose OID is strictly greater than `oid` (GetNext).
    pub fn next_after(oid: &Oid) -> Option<Object> {
        Object::iter().find(|o| o.oid() > *oid)
    }

    /// Whether `oid` names an instance of a known object type that is not `.0`
    /// (v2c `noSuchInstance` rather than `noSuchObject`).
    pub fn is_instance_of_known_type(oid: &Oid) -> bool {
        Object::iter().any(|o| {
            let full = o.oid();
            let arcs = full.arcs();
            let type_arcs = arcs.get(..arcs.len().saturating_sub(1)).unwrap_or(&[]);
            oid.starts_with(type_arcs) && oid.arcs().len() > type_arcs.len()
        })
    }

    /// Whether the object accepts SET.
    pub fn access(self) -> Access {
        match self {
            Object::Outlet(_) | Object::AllOff | Object::AllOn | Object::Ocp(11) => {
                Access::ReadWrite
            }
            _ => Access::ReadOnly,
        }
    }

    /// Read the object's value from `snap`.
    pub fn read(self, snap: &Snapshot) -> MibValue {
        match self {
            Object::System(n) => read_system(n, snap),
            Object::LongOidTest => text(format_args!("{LONG_OID_TEST}")),
            Object::Outlet(o) => MibValue::Integer(i32::from(snap.outlets.contains(o))),
            Object::AllOff | Object::AllOn => MibValue::Integer(0),
            Object::Rail(n) => read_rail(n, snap),
            Object::Network(n) => read_network(n, snap),
            Object::Meter(o, m) => read_meter(o, m, snap),
            Object::Ocp(n) => read_ocp(n, snap),
        }
    }

    /// Validate a SET of `tag`/`content` on this object and plan its effect. `token` goes into
    /// the switch request.
    pub fn plan_set(self, tag: u8, content: &[u8], token: u32) -> Result<SetPlan, SetRefusal> {
        if self.access() == Access::ReadOnly {
            return Err(SetRefusal::NotWritable);
        }
        if tag != super::ber::TAG_INTEGER {
            return Err(SetRefusal::WrongType);
        }
        let value = super::ber::decode_i32(content).map_err(|_| SetRefusal::WrongEncoding)?;
        let boolean = match value {
            0 => false,
            1 => true,
            _ if matches!(self, Object::Ocp(_)) => true,
            _ => return Err(SetRefusal::WrongValue),
        };
        let mut request = match self {
            Object::Outlet(o) => Some(SwitchRequest::set(Source::Net, o, boolean)),
            Object::AllOff if boolean => Some(SwitchRequest::new(Source::Net, SwitchOp::AllOff)),
            Object::AllOn if boolean => Some(SwitchRequest::new(Source::Net, SwitchOp::AllOn)),
            Object::Ocp(_) if value != 0 => {
                Some(SwitchRequest::new(Source::Net, SwitchOp::ResetOverCurrent))
            }
            _ => None,
        };
        if let Some(r) = request.as_mut() {
            r.token = token;
        }
        Ok(SetPlan { value, request })
    }
}

fn text(args: core::fmt::Arguments<'_>) -> MibValue {
    let mut s = String::new();
    // A value longer than the buffer is cut: the bounded formats here never are.
    let _ = s.write_fmt(args);
    MibValue::Text(s)
}

fn read_system(n: u8, snap: &Snapshot) -> MibValue {
    match n {
        1 => text(format_args!("{SYS_DESCR}")),
        2 => MibValue::ObjectId(Oid::from_arcs(&ENTERPRISE_PREFIX).unwrap_or(Oid::EMPTY)),
        // TimeTicks wrap at 2^32 hundredths (RFC 2578), hence the truncating cast.
        3 => MibValue::TimeTicks((snap.uptime_ms / 10) as u32),
        4 => text(format_args!("{SYS_CONTACT}")),
        5 => text(format_args!("{}", snap.serial)),
        6 => text(format_args!("{}", snap.config.identity.location)),
        _ => MibValue::Integer(SYS_SERVICES),
    }
}

fn read_rail(n: u8, snap: &Snapshot) -> MibValue {
    // Die-sensor voltage from the RP2040 datasheet formula T = 27 − (V − 0.706) / 0.001721.
    let sensor_v = 0.706 - (snap.temperature_c - 27.0) * 0.001_721;
    match n {
        1 => text(format_args!("{sensor_v:.5}")),
        2 => text(format_args!("{:.3}", snap.temperature_c)),
        3 => text(format_args!("{:.3}", snap.supply_v)),
        4 => text(format_args!("{:.3}", snap.usb_v)),
        // Divider taps: 12 V rail ÷ 11, VUSB ÷ 2 (hardware map).
        5 => text(format_args!("{:.3}", snap.supply_v / 11.0)),
        6 => text(format_args!("{:.3}", snap.usb_v / 2.0)),
        7 => text(format_args!("1.10")),
        8 => text(format_args!("OK")),
        9 => text(format_args!("1.10")),
        10 => text(format_args!("1.80")),
        _ => text(format_args!("3.30")),
    }
}

fn read_network(n: u8, snap: &Snapshot) -> MibValue {
    let net = &snap.config.network;
    let quad = |a: [u8; 4]| text(format_args!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]));
    match n {
        1 => quad(net.ip),
        2 => quad(net.subnet),
        3 => quad(net.gateway),
        4 => quad(net.dns),
        _ => {
            let m = net.mac;
            text(format_args!(
                "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ))
        }
    }
}

fn read_meter(o: Outlet, m: u8, snap: &Snapshot) -> MibValue {
    let Some(t) = snap.telemetry.get(o.index()) else {
        return MibValue::Text(String::new());
    };
    match m {
        1 => text(format_args!("{:.2}", t.voltage_v)),
        2 => text(format_args!("{:.3}", t.current_a)),
        3 => text(format_args!("{:.1}", t.power_w)),
        4 => text(format_args!("{:.3}", t.power_factor)),
        5 => text(format_args!("{:.3}", t.energy_wh / 1000.0)),
        _ => text(format_args!("{}", t.uptime_s)),
    }
}

fn read_ocp(n: u8, snap: &Snapshot) -> MibValue {
    let ocp = &snap.ocp;
    let saturate = |v: u64| MibValue::Integer(i32::try_from(v).unwrap_or(i32::MAX));
    match n {
        // ENERGIS numbering: 0 NORMAL, 1 WARNING, 2 CRITICAL, 3 LOCKOUT.
        1 => MibValue::Integer(match ocp.state {
            OcpState::Normal => 0,
            OcpState::Warning => 1,
            OcpState::Lockout => 3,
        }),
        2 => text(format_args!("{:.3}", ocp.total_current_a)),
        3 => text(format_args!("{:.2}", ocp.limit_a)),
        4 => text(format_args!("{:.2}", ocp.limit_a - 1.0)),
        5 => text(format_args!("{:.2}", ocp.limit_a - 0.5)),
        6 => text(format_args!("{:.2}", ocp.limit_a - 1.5)),
        7 => MibValue::Integer(i32::from(ocp.last_tripped_channel)),
        8 => saturate(u64::from(ocp.trip_count)),
        9 => saturate(ocp.last_trip_ms),
        10 => MibValue::Integer(i32::from(ocp.state != OcpState::Lockout)),
        _ => MibValue::Integer(0),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pdu::config::PduConfig;
    use crate::pdu::frontend::{OcpStatus, SwitchState};
    use crate::pdu::{ChannelTelemetry, OutletMask};

    /// A running PDU with outlets 1 and 3 on and some load on outlet 1.
    pub(crate) fn snapshot() -> Snapshot {
        let mut telemetry = [ChannelTelemetry::default(); CHANNELS];
        telemetry[0] = ChannelTelemetry {
            voltage_v: 233.571,
            current_a: 0.4567,
            power_w: 98.76,
            power_factor: 0.9251,
            energy_wh: 1234.0,
            uptime_s: 3600,
            degraded: false,
        };
        let mut serial = String::new();
        let _ = serial.push_str("SN-0001234");
        Snapshot {
            uptime_ms: 123_456,
            outlets: OutletMask(0b0000_0101),
            switch_state: SwitchState::Ready,
            telemetry,
            ocp: OcpStatus {
                limit_a: 10.0,
                total_current_a: 0.4567,
                ..OcpStatus::default()
            },
            temperature_c: 27.0,
            supply_v: 12.1,
            usb_v: 5.0,
            serial,
            firmware_version: "1.1.0",
            config: PduConfig::default(),
        }
    }

    #[track_caller]
    fn read_text(o: Object, snap: &Snapshot) -> std::string::String {
        match o.read(snap) {
            MibValue::Text(s) => s.as_str().to_owned(),
            other => panic!("{o:?} read {other:?}"),
        }
    }

    fn outlet(n: u8) -> Outlet {
        Outlet::new(n).unwrap()
    }

    #[test]
    fn objects_are_listed_in_strictly_increasing_oid_order() {
        let all: Vec<Oid> = Object::iter().map(Object::oid).collect();
        assert_eq!(all.len(), OBJECT_COUNT);
        for pair in all.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        assert_eq!(Object::nth(OBJECT_COUNT), None);
    }

    #[test]
    fn energis_oids_are_where_scripts_expect_them() {
        let oid = |o: Object| o.oid().to_string();
        assert_eq!(oid(Object::System(1)), "1.3.6.1.2.1.1.1.0");
        assert_eq!(oid(Object::Outlet(outlet(1))), "1.3.6.1.4.1.19865.2.1.0");
        assert_eq!(oid(Object::AllOff), "1.3.6.1.4.1.19865.2.9.0");
        assert_eq!(oid(Object::AllOn), "1.3.6.1.4.1.19865.2.10.0");
        assert_eq!(
            oid(Object::Meter(outlet(8), 6)),
            "1.3.6.1.4.1.19865.5.8.6.0"
        );
        assert_eq!(oid(Object::Ocp(11)), "1.3.6.1.4.1.19865.6.11.0");
    }

    #[test]
    fn values_use_the_real_pdus_formats() {
        let snap = snapshot();
        assert_eq!(read_text(Object::System(1), &snap), SYS_DESCR);
        assert_eq!(read_text(Object::System(5), &snap), "SN-0001234");
        assert_eq!(read_text(Object::System(6), &snap), "Wien");
        assert_eq!(Object::System(3).read(&snap), MibValue::TimeTicks(12_345));
        assert_eq!(Object::System(7).read(&snap), MibValue::Integer(72));
        assert_eq!(read_text(Object::Network(1), &snap), "192.168.0.22");
        assert_eq!(read_text(Object::Network(2), &snap), "255.255.255.0");
        assert_eq!(read_text(Object::Network(5), &snap), "02:45:4E:00:00:01");
        let ch1 = |m| read_text(Object::Meter(outlet(1), m), &snap);
        assert_eq!(ch1(1), "233.57");
        assert_eq!(ch1(2), "0.457");
        assert_eq!(ch1(3), "98.8");
        assert_eq!(ch1(4), "0.925");
        assert_eq!(ch1(5), "1.234");
        assert_eq!(ch1(6), "3600");
        assert_eq!(read_text(Object::Rail(1), &snap), "0.70600");
        assert_eq!(read_text(Object::Rail(3), &snap), "12.100");
        assert_eq!(read_text(Object::Ocp(3), &snap), "10.00");
        assert_eq!(read_text(Object::Ocp(4), &snap), "9.00");
        assert_eq!(read_text(Object::Ocp(5), &snap), "9.50");
        assert_eq!(read_text(Object::Ocp(6), &snap), "8.50");
        assert_eq!(Object::Ocp(10).read(&snap), MibValue::Integer(1));
        assert_eq!(Object::Outlet(outlet(1)).read(&snap), MibValue::Integer(1));
        assert_eq!(Object::Outlet(outlet(2)).read(&snap), MibValue::Integer(0));
    }

    #[test]
    fn lockout_reads_as_energis_state_3_and_switching_not_allowed() {
        let mut snap = snapshot();
        snap.ocp.state = OcpState::Lockout;
        assert_eq!(Object::Ocp(1).read(&snap), MibValue::Integer(3));
        assert_eq!(Object::Ocp(10).read(&snap), MibValue::Integer(0));
    }

    #[test]
    fn only_outlets_all_on_off_and_ocp_reset_are_writable() {
        let writable: Vec<Object> = Object::iter()
            .filter(|o| o.access() == Access::ReadWrite)
            .collect();
        assert_eq!(writable.len(), 8 + 2 + 1);
        assert!(writable.contains(&Object::Ocp(11)));
        assert_eq!(
            Object::System(1).plan_set(0x02, &[1], 0),
            Err(SetRefusal::NotWritable)
        );
    }

    #[test]
    fn outlet_set_plans_a_net_switch_with_the_token() {
        let plan = Object::Outlet(outlet(3)).plan_set(0x02, &[1], 77).unwrap();
        let mut expected = SwitchRequest::set(Source::Net, outlet(3), true);
        expected.token = 77;
        assert_eq!(plan.request, Some(expected));
        assert_eq!(
            Object::Outlet(outlet(3)).plan_set(0x02, &[2], 0),
            Err(SetRefusal::WrongValue)
        );
        assert_eq!(
            Object::Outlet(outlet(3)).plan_set(0x04, b"1", 0),
            Err(SetRefusal::WrongType)
        );
        assert_eq!(
            Object::Outlet(outlet(3)).plan_set(0x02, &[], 0),
            Err(SetRefusal::WrongEncoding)
        );
    }

    #[test]
    fn all_off_zero_and_ocp_reset_zero_do_nothing() {
        assert_eq!(
            Object::AllOff.plan_set(0x02, &[0], 0).unwrap().request,
            None
        );
        assert_eq!(
            Object::Ocp(11).plan_set(0x02, &[0], 0).unwrap().request,
            None
        );
        let reset = Object::Ocp(11).plan_set(0x02, &[5], 0).unwrap();
        assert_eq!(reset.request.unwrap().op, SwitchOp::ResetOverCurrent);
        assert_eq!(
            Object::AllOn
                .plan_set(0x02, &[1], 0)
                .unwrap()
                .request
                .unwrap()
                .op,
            SwitchOp::AllOn
        );
    }

    #[test]
    fn partial_instance_names_are_recognised_as_known_types() {
        let oid = |a: &[u32]| Oid::from_arcs(a).unwrap();
        assert!(Object::is_instance_of_known_type(&oid(&[
            1, 3, 6, 1, 4, 1, 19865, 2, 1, 5
        ])));
        assert!(!Object::is_instance_of_known_type(&oid(&[
            1, 3, 6, 1, 4, 1, 19865, 2, 1
        ])));
        assert!(!Object::is_instance_of_known_type(&oid(&[
            1, 3, 6, 1, 4, 1, 19865, 7, 1, 0
        ])));
    }
}
