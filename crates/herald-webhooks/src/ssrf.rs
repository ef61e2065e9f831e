//! Refuses webhook targets in private and special-purpose address ranges, so a tenant can't
//! point an endpoint at our own network (Redis, Kafka, the cloud metadata service) and read
//! the responses back through delivery logs.
//!
//! The check runs on *resolved* addresses, not on the URL: a public name can resolve to
//! `127.0.0.1`, `2130706433` is `127.0.0.1` to the system resolver, and a name can change
//! its answer between a check and a connect (DNS rebinding). So [`AddressPolicy::resolve`]
//! returns the addresses to connect to, and callers must connect to exactly those rather
//! than resolving the name again. Redirects must not be followed for the same reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Addresses that deliveries may reach: every public address, plus the operator's
/// allow-list (`dispatcher.allow_addresses`) for targets that are private on purpose, such
/// as a receiver in the same cluster or a test server on loopback.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

/// A refused address, with the range that refused it so the operator can tell a typo from
/// a policy decision and knows which setting lifts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is a {range} address ({cidr}); refused unless allow-listed in dispatcher.allow_addresses")]
pub struct Refused {
    pub ip: IpAddr,
    pub range: &'static str,
    pub cidr: &'static str,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// Every address the host resolved to is refused; this is the first of them.
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("{0} resolved to no addresses")]
    NotFound(String),
    #[error("resolving {0} failed: {1}")]
    Lookup(String, String),
}

impl AddressPolicy {
    /// Parses the allow-list: IP addresses (`127.0.0.1`, `::1`) or CIDR blocks
    /// (`10.0.0.0/8`, `fd00::/8`). Host bits below the prefix are ignored, as most tools do.
    pub fn new(allow: &[String]) -> Result<Self, String> {
        let allow = allow
            .iter()
            .map(|entry| {
                parse_net(entry.trim()).ok_or_else(|| {
                    format!(
                        "dispatcher.allow_addresses entry {entry:?} is not an IP address or CIDR block \
                         (e.g. 127.0.0.1, 10.0.0.0/8, ::1, fd00::/8)"
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// The allow-list as networks already parsed; host bits below each prefix are
    /// ignored.
    pub fn from_nets(allow: impl IntoIterator<Item = IpNet>) -> Self {
        Self { allow: allow.into_iter().map(|net| net.trunc()).collect() }
    }

    /// Ok when `ip` is public or allow-listed.
    ///
    /// IPv6 addresses that stand for an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, NAT64
    /// `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`) are judged by that IPv4 address, since
    /// that is where the packets end up; the refusal then names the IPv4 range. An
    /// allow-list entry matches either form.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.is_allow_listed(ip) {
            return Ok(());
        }
        match special_range(ip) {
            Some(range) => Err(Refused { ip, range: range.name, cidr: range.cidr }),
            None => Ok(()),
        }
    }

    /// The addresses of `host` that deliveries may connect to, with `port`.
    ///
    /// IP literals (`[::1]` brackets included) are checked without a lookup. Names go
    /// through the system resolver (`tokio::net::lookup_host`); refused addresses are
    /// dropped, and only when none is left does the whole target fail, with the first
    /// refusal as the reason. Connect to the returned addresses, never to `host` again.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.check(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }

        let resolved = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ResolveError::Lookup(host.to_owned(), e.to_string()))?;
        let mut allowed: Vec<SocketAddr> = Vec::new();
        let mut first_refusal = None;
        for addr in resolved {
            match self.check(addr.ip()) {
                Ok(()) if !allowed.contains(&addr) => allowed.push(addr),
                Ok(()) => {}
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                }
            }
        }
        match (allowed.is_empty(), first_refusal) {
            (false, _) => Ok(allowed),
            (true, Some(refused)) => Err(ResolveError::Refused(refused)),
            (true, None) => Err(ResolveError::NotFound(host.to_owned())),
        }
    }

    fn is_allow_listed(&self, ip: IpAddr) -> bool {
        let embedded = embedded_ipv4(ip).map(IpAddr::V4);
        self.allow.iter().any(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)))
    }
}

/// The special-purpose range `ip` is in, or None for an ordinary public address.
///
/// Tables below are ordered most specific first (the metadata address before link-local,
/// broadcast before reserved), since the first match names the refusal.
fn special_range(ip: IpAddr) -> Option<&'static Range> {
    match ip {
        IpAddr::V4(v4) => special_range_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(found) = V6_EXACT.iter().find(|r| r.net.contains(&ip)) {
                return Some(found);
            }
            if let Some(v4) = embedded_ipv4(ip) {
                return special_range_v4(v4);
            }
            V6_RANGES.iter().find(|r| r.net.contains(&ip)).or_else(|| {
                // Only 2000::/3 is allocated for global unicast; anything else that the
                // named ranges missed is unassigned, and "reserved" is the honest answer.
                (!GLOBAL_UNICAST_V6.contains(&IpAddr::V6(v6))).then_some(&V6_UNALLOCATED)
            })
        }
    }
}

fn special_range_v4(ip: Ipv4Addr) -> Option<&'static Range> {
    V4_RANGES.iter().find(|r| r.net.contains(&IpAddr::V4(ip)))
}

/// The IPv4 address an IPv6 address stands for, where the IPv6 form is only a way of
/// reaching that IPv4 host.
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let bits = v6.to_bits();
    if IPV4_MAPPED.contains(&ip) || NAT64.contains(&ip) {
        // The low 32 bits; `as` keeps exactly those.
        Some(Ipv4Addr::from_bits(bits as u32))
    } else if SIX_TO_FOUR.contains(&ip) {
        // 2002:AABB:CCDD::/48 carries the IPv4 address right after the 16-bit prefix.
        Some(Ipv4Addr::from_bits((bits >> 80) as u32))
    } else {
        None
    }
}

/// `a.b.c.d`, `a.b.c.d/n`, `x::y` or `x::y/n`, with the host bits masked off.
fn parse_net(text: &str) -> Option<IpNet> {
    if text.contains('/') {
        text.parse::<IpNet>().ok().map(|net| net.trunc())
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// A table entry's network (const, so the tables are statics).
const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> IpNet {
    let [a, b, c, d, e, f, g, h] = segments;
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix)
}

/// A special-purpose range: how it matches, what to call it, and its CIDR as text for
/// the refusal message (a test checks `cidr` parses to `net`).
struct Range {
    net: IpNet,
    name: &'static str,
    cidr: &'static str,
}

const fn range(net: IpNet, name: &'static str, cidr: &'static str) -> Range {
    Range { net, name, cidr }
}

const CLOUD_METADATA: &str = "cloud metadata";

/// IANA's IPv4 special-purpose registry, less the few entries that are globally reachable
/// anycast services, plus the metadata addresses named on their own so the refusal says
/// what the target really was.
static V4_RANGES: &[Range] = &[
    range(v4(0, 0, 0, 0, 8), "unspecified (\"this network\")", "0.0.0.0/8"),
    range(v4(10, 0, 0, 0, 8), "private", "10.0.0.0/8"),
    // Alibaba Cloud's metadata service lives in the shared (CGNAT) range.
    range(v4(100, 100, 100, 200, 32), CLOUD_METADATA, "100.100.100.200/32"),
    range(v4(100, 64, 0, 0, 10), "shared (carrier-grade NAT)", "100.64.0.0/10"),
    range(v4(127, 0, 0, 0, 8), "loopback", "127.0.0.0/8"),
    // AWS, GCP, Azure, DigitalOcean and others all answer on this one address.
    range(v4(169, 254, 169, 254, 32), CLOUD_METADATA, "169.254.169.254/32"),
    range(v4(169, 254, 0, 0, 16), "link-local", "169.254.0.0/16"),
    range(v4(172, 16, 0, 0, 12), "private", "172.16.0.0/12"),
    // Oracle Cloud's metadata service (in the IETF protocol assignments block).
    range(v4(192, 0, 0, 192, 32), CLOUD_METADATA, "192.0.0.192/32"),
    range(v4(192, 0, 0, 0, 24), "IETF protocol assignment", "192.0.0.0/24"),
    range(v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)", "192.0.2.0/24"),
    range(v4(192, 88, 99, 0, 24), "6to4 relay anycast", "192.88.99.0/24"),
    range(v4(192, 168, 0, 0, 16), "private", "192.168.0.0/16"),
    range(v4(198, 18, 0, 0, 15), "benchmarking", "198.18.0.0/15"),
    range(v4(198, 51, 100, 0, 24), "documentation (TEST-NET-2)", "198.51.100.0/24"),
    range(v4(203, 0, 113, 0, 24), "documentation (TEST-NET-3)", "203.0.113.0/24"),
    range(v4(224, 0, 0, 0, 4), "multicast", "224.0.0.0/4"),
    range(v4(255, 255, 255, 255, 32), "broadcast", "255.255.255.255/32"),
    range(v4(240, 0, 0, 0, 4), "reserved", "240.0.0.0/4"),
];

/// Checked before the IPv4 embeddings: `::` and `::1` sit inside `::/96`, not in them, but
/// naming them exactly beats "IPv4-compatible".
static V6_EXACT: &[Range] = &[
    range(v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified", "::/128"),
    range(v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback", "::1/128"),
];

static V6_RANGES: &[Range] = &[
    // Deprecated (RFC 4291); no stack should route these, and some still map them to IPv4.
    range(v6([0, 0, 0, 0, 0, 0, 0, 0], 96), "IPv4-compatible (deprecated)", "::/96"),
    range(v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "local-use NAT64", "64:ff9b:1::/48"),
    range(v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only", "100::/64"),
    range(v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), "IETF protocol assignment", "2001::/23"),
    range(v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation", "2001:db8::/32"),
    range(v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation", "3fff::/20"),
    // The AWS Nitro metadata service's IPv6 address.
    range(v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128), CLOUD_METADATA, "fd00:ec2::254/128"),
    range(v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique-local (private)", "fc00::/7"),
    range(v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local", "fe80::/10"),
    range(v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local (deprecated)", "fec0::/10"),
    range(v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast", "ff00::/8"),
];

static V6_UNALLOCATED: Range =
    range(v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3), "reserved (outside global unicast)", "2000::/3");

const GLOBAL_UNICAST_V6: IpNet = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);
const IPV4_MAPPED: IpNet = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
const NAT64: IpNet = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: IpNet = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn policy(allow: &[&str]) -> AddressPolicy {
        AddressPolicy::new(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[track_caller]
    fn assert_refused(p: &AddressPolicy, addr: &str, range: &str, cidr: &str) {
        let refused = p.check(ip(addr)).expect_err(addr);
        assert_eq!((refused.range, refused.cidr), (range, cidr), "{addr}");
        assert_eq!(refused.ip, ip(addr));
    }

    #[test]
    fn every_table_entry_has_a_cidr_text_that_parses_to_its_net() {
        for r in V4_RANGES.iter().chain(V6_EXACT).chain(V6_RANGES) {
            assert_eq!(parse_net(r.cidr), Some(r.net), "{} {:?}", r.cidr, r.net);
            // And no entry has host bits set, which would make it match nothing.
            assert_eq!(r.net.trunc(), r.net, "{}", r.cidr);
            assert_eq!(parse_net(&r.net.to_string()), Some(r.net), "{}", r.cidr);
        }
    }

    #[test]
    fn refuses_every_special_ipv4_range_at_both_ends() {
        let p = AddressPolicy::default();
        let cases = [
            ("0.0.0.0", "0.255.255.255", "unspecified (\"this network\")", "0.0.0.0/8"),
            ("10.0.0.0", "10.255.255.255", "private", "10.0.0.0/8"),
            ("100.64.0.0", "100.127.255.255", "shared (carrier-grade NAT)", "100.64.0.0/10"),
            ("127.0.0.0", "127.255.255.255", "loopback", "127.0.0.0/8"),
            ("169.254.0.0", "169.254.255.255", "link-local", "169.254.0.0/16"),
            ("172.16.0.0", "172.31.255.255", "private", "172.16.0.0/12"),
            ("192.0.0.0", "192.0.0.255", "IETF protocol assignment", "192.0.0.0/24"),
            ("192.0.2.0", "192.0.2.255", "documentation (TEST-NET-1)", "192.0.2.0/24"),
            ("192.88.99.0", "192.88.99.255", "6to4 relay anycast", "192.88.99.0/24"),
            ("192.168.0.0", "192.168.255.255", "private", "192.168.0.0/16"),
            ("198.18.0.0", "198.19.255.255", "benchmarking", "198.18.0.0/15"),
            ("198.51.100.0", "198.51.100.255", "documentation (TEST-NET-2)", "198.51.100.0/24"),
            ("203.0.113.0", "203.0.113.255", "documentation (TEST-NET-3)", "203.0.113.0/24"),
            ("224.0.0.0", "239.255.255.255", "multicast", "224.0.0.0/4"),
            ("240.0.0.0", "255.255.255.254", "reserved", "240.0.0.0/4"),
        ];
        for (first, last, range, cidr) in cases {
            assert_refused(&p, first, range, cidr);
            assert_refused(&p, last, range, cidr);
        }
        assert_refused(&p, "255.255.255.255", "broadcast", "255.255.255.255/32");
    }

    #[test]
    fn names_cloud_metadata_addresses_specifically() {
        let p = AddressPolicy::default();
        assert_refused(&p, "169.254.169.254", "cloud metadata", "169.254.169.254/32");
        assert_refused(&p, "100.100.100.200", "cloud metadata", "100.100.100.200/32");
        assert_refused(&p, "192.0.0.192", "cloud metadata", "192.0.0.192/32");
        assert_refused(&p, "fd00:ec2::254", "cloud metadata", "fd00:ec2::254/128");
        // Its neighbours are refused under the enclosing range's name.
        assert_refused(&p, "169.254.169.253", "link-local", "169.254.0.0/16");
        assert_refused(&p, "fd00:ec2::253", "unique-local (private)", "fc00::/7");
    }

    #[test]
    fn allows_public_addresses_just_outside_the_special_ranges() {
        let p = AddressPolicy::default();
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.88.98.255",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "203.0.112.255",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:82a::200e",
            "2001:200::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "2003::1",
            "3ffe::1",
        ] {
            assert_eq!(p.check(ip(public)), Ok(()), "{public}");
        }
    }

    #[test]
    fn refuses_every_special_ipv6_range() {
        let p = AddressPolicy::default();
        let cases = [
            ("::", "unspecified", "::/128"),
            ("::1", "loopback", "::1/128"),
            ("::2", "IPv4-compatible (deprecated)", "::/96"),
            ("::7f00:1", "IPv4-compatible (deprecated)", "::/96"),
            ("64:ff9b:1::1", "local-use NAT64", "64:ff9b:1::/48"),
            ("100::", "discard-only", "100::/64"),
            ("100::ffff:ffff:ffff:ffff", "discard-only", "100::/64"),
            ("2001::1", "IETF protocol assignment", "2001::/23"),
            ("2001:1ff:ffff::1", "IETF protocol assignment", "2001::/23"),
            ("2001:db8::1", "documentation", "2001:db8::/32"),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "documentation", "2001:db8::/32"),
            ("3fff::1", "documentation", "3fff::/20"),
            ("fc00::1", "unique-local (private)", "fc00::/7"),
            ("fd12:3456::1", "unique-local (private)", "fc00::/7"),
            ("fe80::1", "link-local", "fe80::/10"),
            ("febf:ffff::1", "link-local", "fe80::/10"),
            ("fec0::1", "site-local (deprecated)", "fec0::/10"),
            ("ff02::1", "multicast", "ff00::/8"),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "multicast", "ff00::/8"),
            // Unallocated space outside 2000::/3.
            ("4000::1", "reserved (outside global unicast)", "2000::/3"),
            ("::ffff:0:1.2.3.4", "reserved (outside global unicast)", "2000::/3"),
            ("5f00::1", "reserved (outside global unicast)", "2000::/3"),
        ];
        for (addr, range, cidr) in cases {
            assert_refused(&p, addr, range, cidr);
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_judged_by_the_ipv4_address() {
        let p = AddressPolicy::default();
        // IPv4-mapped.
        assert_refused(&p, "::ffff:127.0.0.1", "loopback", "127.0.0.0/8");
        assert_refused(&p, "::ffff:10.1.2.3", "private", "10.0.0.0/8");
        assert_refused(&p, "::ffff:169.254.169.254", "cloud metadata", "169.254.169.254/32");
        assert_refused(&p, "::ffff:0.0.0.0", "unspecified (\"this network\")", "0.0.0.0/8");
        assert_eq!(p.check(ip("::ffff:8.8.8.8")), Ok(()));
        // NAT64 well-known prefix.
        assert_refused(&p, "64:ff9b::a9fe:a9fe", "cloud metadata", "169.254.169.254/32");
        assert_refused(&p, "64:ff9b::192.168.1.1", "private", "192.168.0.0/16");
        assert_eq!(p.check(ip("64:ff9b::1.1.1.1")), Ok(()));
        // 6to4.
        assert_refused(&p, "2002:7f00:1::1", "loopback", "127.0.0.0/8");
        assert_refused(&p, "2002:c0a8:101::", "private", "192.168.0.0/16");
        assert_eq!(p.check(ip("2002:808:808::1")), Ok(()));
        // The refusal still names the address that was asked about.
        let refused = p.check(ip("::ffff:127.0.0.1")).unwrap_err();
        assert_eq!(refused.ip, ip("::ffff:127.0.0.1"));
    }

    #[test]
    fn the_refusal_names_the_address_the_range_and_the_setting() {
        let refused = AddressPolicy::default().check(ip("169.254.169.254")).unwrap_err();
        let message = refused.to_string();
        assert!(message.contains("169.254.169.254 is a cloud metadata address"), "{message}");
        assert!(message.contains("169.254.169.254/32"), "{message}");
        assert!(message.contains("dispatcher.allow_addresses"), "{message}");
    }

    #[test]
    fn allow_list_entries_lift_refusals_for_exactly_their_addresses() {
        let p = policy(&["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "192.168.1.0/24"]);
        for allowed in ["127.0.0.1", "10.0.0.1", "10.255.255.255", "::1", "fd00::1", "fdff::1", "192.168.1.7"]
        {
            assert_eq!(p.check(ip(allowed)), Ok(()), "{allowed}");
        }
        assert_refused(&p, "127.0.0.2", "loopback", "127.0.0.0/8");
        assert_refused(&p, "fc00::1", "unique-local (private)", "fc00::/7");
        assert_refused(&p, "192.168.2.1", "private", "192.168.0.0/16");
        assert_refused(&p, "172.16.0.1", "private", "172.16.0.0/12");
        // An allow-listed IPv4 address is allowed in its IPv6 forms too.
        assert_eq!(p.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(p.check(ip("64:ff9b::10.0.0.1")), Ok(()));
        // And an IPv6 entry covering the mapped form works as well.
        let mapped = policy(&["::ffff:172.16.0.0/108"]);
        assert_eq!(mapped.check(ip("::ffff:172.16.0.1")), Ok(()));
        assert_refused(&mapped, "172.16.0.1", "private", "172.16.0.0/12");
    }

    #[test]
    fn allow_list_covers_whole_spaces_and_masks_host_bits() {
        let everything = policy(&["0.0.0.0/0", "::/0"]);
        for addr in ["127.0.0.1", "169.254.169.254", "::1", "fe80::1", "ff02::1"] {
            assert_eq!(everything.check(ip(addr)), Ok(()), "{addr}");
        }
        // 10.1.2.3/8 means 10.0.0.0/8.
        let sloppy = policy(&["10.1.2.3/8", " 192.168.0.1 "]);
        assert_eq!(sloppy.check(ip("10.200.0.1")), Ok(()));
        assert_eq!(sloppy.check(ip("192.168.0.1")), Ok(()));
        assert!(sloppy.check(ip("192.168.0.2")).is_err());
    }

    #[test]
    fn bad_allow_list_entries_are_named() {
        for bad in [
            "",
            "localhost",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0/8",
            "10.0.0.0/8/8",
            "[::1]",
            "1.2.3.4.5",
        ] {
            let err = AddressPolicy::new(&["127.0.0.1".to_string(), bad.to_string()]).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("dispatcher.allow_addresses"), "{err}");
        }
    }

    #[test]
    fn masks_are_right_at_the_edges() {
        let net = |text: &str| parse_net(text).unwrap();
        assert_eq!(net("10.1.2.3/0"), net("0.0.0.0/0"));
        assert_eq!(net("200.1.2.3/1"), net("128.0.0.0/1"));
        assert_eq!(net("10.1.2.3/32"), net("10.1.2.3"));
        assert!(
            net("10.1.2.3/32").contains(&ip("10.1.2.3")) && !net("10.1.2.3/32").contains(&ip("10.1.2.4"))
        );
        assert_eq!(net("::1/0"), net("::/0"));
        assert_eq!(net("::1/128"), net("::1"));
        assert_eq!(net("::3/127"), net("::2/127"));
        assert!(net("::2/127").contains(&ip("::3")) && !net("::2/127").contains(&ip("::1")));
        // An allow-list of parsed networks masks host bits the same way.
        let p = AddressPolicy::from_nets([net("::1"), "10.1.2.3/8".parse().unwrap()]);
        assert_eq!(p.check(ip("10.200.0.1")), Ok(()));
    }

    #[tokio::test]
    async fn resolves_ip_literals_without_a_lookup() {
        let p = AddressPolicy::default();
        assert_eq!(p.resolve("1.1.1.1", 443).await.unwrap(), vec!["1.1.1.1:443".parse().unwrap()]);
        assert_eq!(
            p.resolve("[2606:4700:4700::1111]", 80).await.unwrap(),
            vec!["[2606:4700:4700::1111]:80".parse().unwrap()]
        );
        for refused in ["127.0.0.1", "[::1]", "::1", "169.254.169.254", "[::ffff:10.0.0.1]"] {
            match p.resolve(refused, 80).await {
                Err(ResolveError::Refused(r)) => assert_eq!(r.ip, ip(refused.trim_matches(['[', ']']))),
                other => panic!("{refused}: {other:?}"),
            }
        }
        let allowed = policy(&["::1"]);
        assert_eq!(allowed.resolve("[::1]", 8080).await.unwrap(), vec!["[::1]:8080".parse().unwrap()]);
    }

    #[tokio::test]
    async fn localhost_is_refused_unless_its_addresses_are_allowed() {
        match AddressPolicy::default().resolve("localhost", 80).await {
            Err(ResolveError::Refused(r)) => {
                assert_eq!(r.range, "loopback");
                assert!(r.ip.is_loopback(), "{r}");
            }
            other => panic!("{other:?}"),
        }

        let allowed = policy(&["127.0.0.1", "::1"]);
        let addrs = allowed.resolve("localhost", 8080).await.unwrap();
        assert!(!addrs.is_empty());
        for addr in &addrs {
            assert!(addr.ip().is_loopback() && addr.port() == 8080, "{addr}");
        }

        // Only what is allowed comes back, even when the name has other addresses.
        let v4_only = policy(&["127.0.0.1"]);
        let addrs = v4_only.resolve("localhost", 80).await.unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:80".parse().unwrap()]);
    }

    #[tokio::test]
    async fn numeric_forms_the_system_resolver_understands_are_checked_after_resolution() {
        // `IpAddr::from_str` rejects these, but getaddrinfo reads them as 127.0.0.1, which is
        // why the check belongs after resolution and not on the URL.
        let p = AddressPolicy::default();
        for sneaky in ["2130706433", "127.1", "0x7f.0.0.1"] {
            match p.resolve(sneaky, 80).await {
                Err(ResolveError::Refused(r)) => assert_eq!(r.ip, ip("127.0.0.1"), "{sneaky}"),
                // A resolver that doesn't know the form fails the lookup: refused either way.
                Err(ResolveError::Lookup(..) | ResolveError::NotFound(_)) => {}
                Ok(addrs) => panic!("{sneaky} resolved to {addrs:?} and was allowed"),
            }
        }
    }

    #[tokio::test]
    async fn lookup_failures_name_the_host() {
        // `.invalid` is reserved never to resolve (RFC 6761).
        match AddressPolicy::default().resolve("nothing-here.invalid", 80).await {
            Err(e @ ResolveError::Lookup(..)) | Err(e @ ResolveError::NotFound(_)) => {
                assert!(e.to_string().contains("nothing-here.invalid"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
