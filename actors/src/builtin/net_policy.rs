//! The address policy of `web_fetch`: which addresses an agent may make
//! hale connect to.
//!
//! A URL in a tool call is hostile input: the agent writes whatever the
//! last page it read told it to. Left alone, `web_fetch` would read
//! hale's own control plane (`http://127.0.0.1:PORT/metrics`), a cloud
//! metadata service (`169.254.169.254`), or any service on the operator's
//! private network, and hand the answers to the model (server-side
//! request forgery). This module decides, as a pure function with no I/O,
//! whether one address may be reached; `web_fetch` applies it at every
//! point where an address is chosen (the URL's host before sending, each
//! address DNS returns, each redirect hop), so the address checked is the
//! address connected to.
//!
//! # The rule
//! An address is refused when it lies in a special-purpose range
//! ([`Range`]) and no allow-list entry covers it. IPv6 forms that carry an
//! IPv4 address (IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96`,
//! NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address
//! inside. IPv6 outside global unicast (`2000::/3`) is refused as
//! reserved. URL host literals in decimal (`2130706433`), octal
//! (`0177.0.0.1`), hex (`0x7f.1`) or short form (`127.1`) need nothing
//! here: the `url` crate (which reqwest uses) rewrites them to the dotted
//! address before anyone sees the host, and the tests hold it to that.
//!
//! # Allow-list entries (`[tools] web_fetch_allow`)
//! | entry | allows |
//! |---|---|
//! | `127.0.0.1:8080`, `[::1]:8080` | that address on that port, when the URL names the address literally |
//! | `10.1.2.3`, `::1` | that address on any port, literal or resolved from a name |
//! | `10.0.0.0/8`, `fd00::/8` | every address in the block, on any port, literal or resolved |
//! | `internal.example.com` | that host name on any port, whatever it resolves to |
//! | `internal.example.com:8080` | that host name on that port only; other ports of the name are refused |
//!
//! An `address:port` entry applies only to URLs that write the address:
//! the DNS resolver sees names, never ports, so it cannot tell
//! `localhost:8080` from `localhost:9090`. To reach a service by name,
//! allow-list the name. Host names match exactly (no wildcards), ignoring
//! case and a trailing dot. A name entry trusts the operator's DNS for
//! that name: its addresses are not checked.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use reqwest::Url;

/// A special-purpose address range that `web_fetch` refuses unless
/// allow-listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Range {
    /// `0.0.0.0` and `::`: connecting to them reaches the local host.
    Unspecified,
    /// `0.0.0.0/8`, "this network"; on Linux it reaches the local host.
    ThisNetwork,
    /// `127.0.0.0/8` and `::1`: hale itself and every local service.
    Loopback,
    /// `169.254.0.0/16` and `fe80::/10`, where cloud metadata services
    /// answer.
    LinkLocal,
    /// `10.0.0.0/8`, `172.16.0.0/12` and `192.168.0.0/16`.
    Private,
    /// `100.64.0.0/10`, the shared address space of carrier-grade NAT: not
    /// the public internet, often a provider's internal network.
    SharedCgnat,
    /// `fc00::/7`, IPv6's private addresses.
    UniqueLocal,
    /// `fec0::/10`, deprecated IPv6 site-local addresses.
    SiteLocal,
    /// `224.0.0.0/4` and `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`,
    /// `2001:db8::/32` and `3fff::/20`: never on the internet.
    Documentation,
    /// `198.18.0.0/15`, for network benchmarks.
    Benchmarking,
    /// The other special-purpose blocks: `192.0.0.0/24`, `192.88.99.0/24`,
    /// `240.0.0.0/4`, IPv6 `100::/64`, `2001::/23` (Teredo, ORCHID, ...),
    /// `64:ff9b:1::/48`, IPv4-compatible IPv6, and all IPv6 outside
    /// `2000::/3`.
    Reserved,
}

impl Range {
    /// The range's short name, as it appears in outcomes' data
    /// (`loopback`, `link_local`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Range::Unspecified => "unspecified",
            Range::ThisNetwork => "this_network",
            Range::Loopback => "loopback",
            Range::LinkLocal => "link_local",
            Range::Private => "private",
            Range::SharedCgnat => "shared_cgnat",
            Range::UniqueLocal => "unique_local",
            Range::SiteLocal => "site_local",
            Range::Multicast => "multicast",
            Range::Broadcast => "broadcast",
            Range::Documentation => "documentation",
            Range::Benchmarking => "benchmarking",
            Range::Reserved => "reserved",
        }
    }

    /// The range in words, to follow "is".
    fn phrase(self) -> &'static str {
        match self {
            Range::Unspecified => "the unspecified address (it reaches the local host)",
            Range::ThisNetwork => "in 0.0.0.0/8, \"this network\" (it reaches the local host)",
            Range::Loopback => "a loopback address (127.0.0.0/8, ::1)",
            Range::LinkLocal => {
                "a link-local address (169.254.0.0/16, fe80::/10, where cloud metadata services answer)"
            }
            Range::Private => "a private address (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)",
            Range::SharedCgnat => {
                "in the shared address space 100.64.0.0/10 (carrier-grade NAT, not the public internet)"
            }
            Range::UniqueLocal => "a unique-local IPv6 address (fc00::/7)",
            Range::SiteLocal => "a site-local IPv6 address (fec0::/10)",
            Range::Multicast => "a multicast address",
            Range::Broadcast => "the broadcast address",
            Range::Documentation => "in a documentation range",
            Range::Benchmarking => "in the benchmarking range 198.18.0.0/15",
            Range::Reserved => "in a reserved or special-purpose range",
        }
    }
}

/// How an IPv6 address carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`: the IPv4 address itself, seen through IPv6.
    Ipv4Mapped,
    /// `::a.b.c.d`, deprecated.
    Ipv4Compatible,
    /// `64:ff9b::a.b.c.d`, the NAT64 well-known prefix.
    Nat64,
    /// `2002:AABB:CCDD::/48`, 6to4.
    SixToFour,
}

impl Embedding {
    fn phrase(self) -> &'static str {
        match self {
            Embedding::Ipv4Mapped => "IPv4-mapped",
            Embedding::Ipv4Compatible => "IPv4-compatible",
            Embedding::Nat64 => "NAT64",
            Embedding::SixToFour => "6to4",
        }
    }
}

/// Why an address is special: its range, and the IPv4 address it carries
/// when that is what put it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Special {
    /// The range the address (or the IPv4 address inside it) lies in.
    pub range: Range,
    /// The IPv4 address inside an IPv6 address, and how it is carried.
    pub embedded: Option<(Embedding, Ipv4Addr)>,
}

impl Special {
    fn plain(range: Range) -> Self {
        Self {
            range,
            embedded: None,
        }
    }
}

/// The special-purpose range `ip` lies in, or `None` for an ordinary
/// public address. See the module docs for the ranges.
pub fn special(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4).map(Special::plain),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn special_v4(ip: Ipv4Addr) -> Option<Range> {
    const TABLE: &[([u8; 4], u32, Range)] = &[
        ([0, 0, 0, 0], 32, Range::Unspecified),
        ([0, 0, 0, 0], 8, Range::ThisNetwork),
        ([10, 0, 0, 0], 8, Range::Private),
        ([100, 64, 0, 0], 10, Range::SharedCgnat),
        ([127, 0, 0, 0], 8, Range::Loopback),
        ([169, 254, 0, 0], 16, Range::LinkLocal),
        ([172, 16, 0, 0], 12, Range::Private),
        ([192, 0, 0, 0], 24, Range::Reserved),
        ([192, 0, 2, 0], 24, Range::Documentation),
        ([192, 88, 99, 0], 24, Range::Reserved),
        ([192, 168, 0, 0], 16, Range::Private),
        ([198, 18, 0, 0], 15, Range::Benchmarking),
        ([198, 51, 100, 0], 24, Range::Documentation),
        ([203, 0, 113, 0], 24, Range::Documentation),
        ([224, 0, 0, 0], 4, Range::Multicast),
        ([255, 255, 255, 255], 32, Range::Broadcast),
        ([240, 0, 0, 0], 4, Range::Reserved),
    ];
    TABLE
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, range)| *range)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

fn special_v6(ip: Ipv6Addr) -> Option<Special> {
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let embedded = |how: Embedding, v4: Ipv4Addr| {
        special_v4(v4).map(|range| Special {
            range,
            embedded: Some((how, v4)),
        })
    };
    if ip == Ipv6Addr::UNSPECIFIED {
        return Some(Special::plain(Range::Unspecified));
    }
    if ip == Ipv6Addr::LOCALHOST {
        return Some(Special::plain(Range::Loopback));
    }
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96) {
        return embedded(Embedding::Ipv4Mapped, low_v4);
    }
    if in_v6(ip, [0; 8], 96) {
        // Deprecated and never routed: refused even around a public
        // address, naming the inner range when it has one.
        return Some(
            embedded(Embedding::Ipv4Compatible, low_v4).unwrap_or(Special {
                range: Range::Reserved,
                embedded: Some((Embedding::Ipv4Compatible, low_v4)),
            }),
        );
    }
    if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return embedded(Embedding::Nat64, low_v4);
    }
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        let v4 = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return embedded(Embedding::SixToFour, v4);
    }
    const TABLE: &[([u16; 8], u32, Range)] = &[
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, Range::Reserved),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, Range::Reserved),
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, Range::Documentation),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, Range::Reserved),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, Range::Documentation),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, Range::UniqueLocal),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, Range::LinkLocal),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, Range::SiteLocal),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, Range::Multicast),
    ];
    if let Some((_, _, range)) = TABLE
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
    {
        return Some(Special::plain(*range));
    }
    // Only 2000::/3 is global unicast; the rest is unassigned or special.
    if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return Some(Special::plain(Range::Reserved));
    }
    None
}

/// The form allow-list entries and checked addresses are compared in: an
/// IPv4-mapped IPv6 address is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Lowercase, without a trailing dot: the form host names are compared in.
fn canonical_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// One entry of `[tools] web_fetch_allow`, parsed. See the module docs
/// for what each form allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    text: String,
    kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryKind {
    /// An address, on one port or (`None`) any port.
    Addr { ip: IpAddr, port: Option<u16> },
    /// A CIDR block, any port.
    Net { base: IpAddr, prefix: u8 },
    /// A host name, on one port or (`None`) any port.
    Name { name: String, port: Option<u16> },
}

/// Why an allow-list entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{entry}`: {reason}")]
pub struct AllowEntryError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for AllowEntry {
    type Err = AllowEntryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| AllowEntryError {
            entry: text.to_owned(),
            reason: reason.to_owned(),
        };
        let kind = parse_entry(text.trim()).map_err(|reason| fail(&reason))?;
        Ok(Self {
            text: text.trim().to_owned(),
            kind,
        })
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{text}` is not a port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

fn parse_entry(text: &str) -> Result<EntryKind, String> {
    const FORMS: &str = "write an address (`10.1.2.3`), `address:port` (`127.0.0.1:8080`, \
                         `[::1]:8080`), a CIDR block (`10.0.0.0/8`), or a host name with an \
                         optional port (`internal.example.com`, `internal.example.com:8080`)";
    if text.is_empty() {
        return Err(format!("empty entry; {FORMS}"));
    }
    if text.contains("://")
        || text.contains(['@', '?', '#', '*'])
        || text.contains(char::is_whitespace)
    {
        return Err(format!(
            "not an address or host name (no scheme, path, user, wildcard or spaces); {FORMS}"
        ));
    }
    if let Some((base, prefix)) = text.split_once('/') {
        let base: IpAddr = base
            .parse()
            .map_err(|_| format!("`{base}` is not an IP address; {FORMS}"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| u32::from(*p) <= max)
            .ok_or_else(|| format!("`/{prefix}` is not a prefix length (0-{max})"))?;
        let masked = mask(base, prefix);
        if masked != base {
            return Err(format!(
                "{base} has bits set beyond /{prefix}; did you mean {masked}/{prefix}?"
            ));
        }
        // A block of IPv4-mapped addresses is the IPv4 block it maps.
        return Ok(match base {
            IpAddr::V6(v6)
                if let Some(v4) = v6.to_ipv4_mapped()
                    && prefix >= 96 =>
            {
                EntryKind::Net {
                    base: IpAddr::V4(v4),
                    prefix: prefix - 96,
                }
            }
            _ => EntryKind::Net { base, prefix },
        });
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(EntryKind::Addr {
            ip: canonical(ip),
            port: None,
        });
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        let port = parse_port(&addr.port().to_string())?;
        return Ok(EntryKind::Addr {
            ip: canonical(addr.ip()),
            port: Some(port),
        });
    }
    // A host name, or an address in a form only URLs accept (`127.1`),
    // with an optional port; read the host the way request URLs are read.
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(parse_port(port)?)),
        Some(_) => return Err(format!("not an address or host name; {FORMS}")),
        None => (text, None),
    };
    let url = Url::parse(&format!("http://{host}/"))
        .map_err(|e| format!("`{host}` is not a host name ({e}); {FORMS}"))?;
    let Some(host) = url.host_str().filter(|_| url.path() == "/") else {
        return Err(format!("not an address or host name; {FORMS}"));
    };
    match host_ip(host) {
        Some(ip) => Ok(EntryKind::Addr {
            ip: canonical(ip),
            port,
        }),
        None => Ok(EntryKind::Name {
            name: canonical_name(host),
            port,
        }),
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

/// The address a URL's host names, if it is an address: the `url` crate
/// writes IPv4 in dotted form and IPv6 in brackets.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

impl AllowEntry {
    /// The entry as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this entry allows `ip` on `port` (`None`: the port is not
    /// known, as in the resolver, so only port-free entries can match).
    fn allows_ip(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let ip = canonical(ip);
        match &self.kind {
            EntryKind::Addr {
                ip: allowed,
                port: allowed_port,
            } => *allowed == ip && (allowed_port.is_none() || *allowed_port == port),
            EntryKind::Net { base, prefix } => {
                base.is_ipv4() == ip.is_ipv4() && mask(ip, *prefix) == *base
            }
            EntryKind::Name { .. } => false,
        }
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The operator's `[tools] web_fetch_allow`: the addresses and names
/// `web_fetch` may reach although the policy refuses them. Empty by
/// default. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<AllowEntry>,
}

/// What the check of a URL's host found, when it did not refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCheck {
    /// The host is an address, and it may be reached.
    Address,
    /// The host is a name the allow-list trusts (on this port): its
    /// addresses are not checked.
    TrustedName,
    /// The host is a name; each address it resolves to must pass
    /// [`AllowList::check_resolved`] before a connection is made.
    Resolve,
}

/// Why the policy refused a host or address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The address lies in a special-purpose range and no entry allows it.
    #[error("{}", describe(host, *ip, special))]
    Address {
        /// The host as the URL wrote it (after the `url` crate's
        /// normalisation): an address, or the name that resolved to `ip`.
        host: String,
        /// The address refused.
        ip: IpAddr,
        /// Why it is special.
        special: Special,
    },
    /// The name is allow-listed, but only on other ports.
    #[error(
        "`{host}` is allow-listed only on port{} {}, not {port}",
        if allowed.len() == 1 { "" } else { "s" },
        allowed.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
    )]
    Port {
        /// The host name.
        host: String,
        /// The port asked for.
        port: u16,
        /// The ports its entries allow.
        allowed: Vec<u16>,
    },
}

fn describe(host: &str, ip: IpAddr, special: &Special) -> String {
    let subject = if host_ip(host).is_some() {
        ip.to_string()
    } else {
        format!("`{host}` resolves to {ip}, which")
    };
    match special.embedded {
        Some((how, v4)) => format!(
            "{subject} is an {} IPv6 address of {v4}, {}",
            how.phrase(),
            special.range.phrase()
        ),
        None => format!("{subject} is {}", special.range.phrase()),
    }
}

impl Refusal {
    /// The host the refusal is about, as the URL wrote it (or as the
    /// resolver was asked for it).
    pub fn host(&self) -> &str {
        match self {
            Refusal::Address { host, .. } | Refusal::Port { host, .. } => host,
        }
    }

    /// The range of an address refusal.
    pub fn range(&self) -> Option<Range> {
        match self {
            Refusal::Address { special, .. } => Some(special.range),
            Refusal::Port { .. } => None,
        }
    }

    /// The refused address, for an address refusal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Refusal::Address { ip, .. } => Some(*ip),
            Refusal::Port { .. } => None,
        }
    }
}

impl From<Vec<AllowEntry>> for AllowList {
    fn from(entries: Vec<AllowEntry>) -> Self {
        Self { entries }
    }
}

impl AllowList {
    /// Parses every entry.
    ///
    /// # Errors
    /// The first entry that cannot be read, naming it.
    pub fn parse<I, S>(entries: I) -> Result<Self, AllowEntryError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let entries = entries
            .into_iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// The entries, in the order they were given.
    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    /// Whether there are no entries (the default: nothing special is
    /// reachable).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks `ip` on `port` (`None` when the port is not known): allowed
    /// when it is an ordinary public address or an entry covers it.
    ///
    /// # Errors
    /// [`Refusal::Address`] naming `host` (how the URL wrote it).
    pub fn check_ip(&self, host: &str, ip: IpAddr, port: Option<u16>) -> Result<(), Refusal> {
        let Some(special) = special(ip) else {
            return Ok(());
        };
        if self.entries.iter().any(|e| e.allows_ip(ip, port)) {
            return Ok(());
        }
        Err(Refusal::Address {
            host: host.to_owned(),
            ip,
            special,
        })
    }

    /// Checks a URL's host (as the `url` crate serialises it) and port
    /// (the scheme's default filled in), before a request or redirect
    /// hop is sent.
    ///
    /// # Errors
    /// The address is refused, or the name is allow-listed only on other
    /// ports.
    pub fn check_host(&self, host: &str, port: u16) -> Result<HostCheck, Refusal> {
        if let Some(ip) = host_ip(host) {
            return self
                .check_ip(host, ip, Some(port))
                .map(|()| HostCheck::Address);
        }
        let name = canonical_name(host);
        let ports: Vec<Option<u16>> = self
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::Name { name: n, port } if *n == name => Some(*port),
                _ => None,
            })
            .collect();
        if ports.is_empty() {
            return Ok(HostCheck::Resolve);
        }
        if ports.iter().any(|p| p.is_none() || *p == Some(port)) {
            return Ok(HostCheck::TrustedName);
        }
        Err(Refusal::Port {
            host: name,
            port,
            allowed: ports.into_iter().flatten().collect(),
        })
    }

    /// Checks the addresses `name` resolved to, before any is connected
    /// to. Every address must pass: one refused address refuses the name,
    /// so a name cannot mix a public address with a private one and hope
    /// the connection picks the latter. A name the allow-list trusts
    /// passes whatever it resolves to ([`check_host`](Self::check_host)
    /// has already checked its port).
    ///
    /// # Errors
    /// The first refused address.
    pub fn check_resolved(&self, name: &str, addrs: &[IpAddr]) -> Result<(), Refusal> {
        let trusted = {
            let name = canonical_name(name);
            self.entries
                .iter()
                .any(|e| matches!(&e.kind, EntryKind::Name { name: n, .. } if *n == name))
        };
        if trusted {
            return Ok(());
        }
        addrs
            .iter()
            .try_for_each(|ip| self.check_ip(name, *ip, None))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn range_of(text: &str) -> Option<Range> {
        special(ip(text)).map(|s| s.range)
    }

    #[test]
    fn every_special_range_is_refused_and_public_addresses_are_not() {
        use Range::*;
        let table: &[(&str, Option<Range>)] = &[
            // IPv4
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(ThisNetwork)),
            ("0.255.255.255", Some(ThisNetwork)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("100.63.255.255", None),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("100.128.0.0", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("169.254.169.254", Some(LinkLocal)),
            ("172.15.255.255", None),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.0.0.8", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("192.88.99.1", Some(Reserved)),
            ("192.168.1.1", Some(Private)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("93.184.215.14", None),
            ("223.255.255.255", None),
            // IPv6
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("64:ff9b:1::1", Some(Reserved)),
            ("::2", Some(ThisNetwork)), // IPv4-compatible 0.0.0.2
            ("4000::1", Some(Reserved)),
            ("2606:4700:4700::1111", None),
            ("2001:4860:4860::8888", None),
        ];
        for (text, expected) in table {
            assert_eq!(range_of(text), *expected, "{text}");
        }
    }

    #[test]
    fn ipv6_forms_carrying_ipv4_are_judged_by_the_ipv4_inside() {
        let table: &[(&str, Option<(Range, Embedding)>)] = &[
            (
                "::ffff:127.0.0.1",
                Some((Range::Loopback, Embedding::Ipv4Mapped)),
            ),
            (
                "::ffff:7f00:1",
                Some((Range::Loopback, Embedding::Ipv4Mapped)),
            ),
            (
                "::ffff:10.0.0.1",
                Some((Range::Private, Embedding::Ipv4Mapped)),
            ),
            (
                "::ffff:169.254.169.254",
                Some((Range::LinkLocal, Embedding::Ipv4Mapped)),
            ),
            ("::ffff:8.8.8.8", None),
            (
                "::127.0.0.1",
                Some((Range::Loopback, Embedding::Ipv4Compatible)),
            ),
            // Deprecated: refused even around a public address.
            (
                "::8.8.8.8",
                Some((Range::Reserved, Embedding::Ipv4Compatible)),
            ),
            (
                "64:ff9b::127.0.0.1",
                Some((Range::Loopback, Embedding::Nat64)),
            ),
            (
                "64:ff9b::a9fe:a9fe",
                Some((Range::LinkLocal, Embedding::Nat64)),
            ),
            ("64:ff9b::8.8.8.8", None),
            (
                "2002:7f00:1::1",
                Some((Range::Loopback, Embedding::SixToFour)),
            ),
            (
                "2002:c0a8:101::",
                Some((Range::Private, Embedding::SixToFour)),
            ),
            ("2002:0808:0808::1", None),
        ];
        for (text, expected) in table {
            let got = special(ip(text)).map(|s| (s.range, s.embedded.unwrap().0));
            assert_eq!(got, *expected, "{text}");
        }
    }

    /// What the `url` crate makes of odd host literals: the policy only
    /// ever sees the normalised host.
    #[test]
    fn url_host_literals_are_normalised_before_the_policy_sees_them() {
        let list = AllowList::default();
        let table: &[(&str, &str)] = &[
            ("http://127.0.0.1/", "127.0.0.1"),
            ("http://2130706433/", "127.0.0.1"),
            ("http://0177.0.0.1/", "127.0.0.1"),
            ("http://0x7f.1/", "127.0.0.1"),
            ("http://0x7f000001/", "127.0.0.1"),
            ("http://017700000001/", "127.0.0.1"),
            ("http://127.1/", "127.0.0.1"),
            ("http://127.0.1/", "127.0.0.1"),
            ("http://127.0.0.1./", "127.0.0.1"),
            ("http://%31%32%37.0.0.1/", "127.0.0.1"),
            ("http://0/", "0.0.0.0"),
            ("http://0x0/", "0.0.0.0"),
            ("http://0xa9fea9fe/", "169.254.169.254"),
            ("http://2852039166/", "169.254.169.254"),
            ("http://012.0.0.1/", "10.0.0.1"),
            ("http://[::1]/", "[::1]"),
            ("http://[0:0:0:0:0:0:0:1]/", "[::1]"),
            ("http://[::ffff:127.0.0.1]/", "[::ffff:7f00:1]"),
            ("http://[::ffff:7f00:1]:8080/", "[::ffff:7f00:1]"),
            ("http://[64:ff9b::7f00:1]/", "[64:ff9b::7f00:1]"),
            ("http://[2002:7f00:1::]/", "[2002:7f00:1::]"),
            ("http://[fe80::1]/", "[fe80::1]"),
        ];
        for (url, host) in table {
            let parsed = Url::parse(url).unwrap();
            assert_eq!(parsed.host_str(), Some(*host), "{url}");
            let port = parsed.port_or_known_default().unwrap();
            let refused = list.check_host(parsed.host_str().unwrap(), port);
            assert!(
                matches!(refused, Err(Refusal::Address { .. })),
                "{url}: {refused:?}"
            );
        }
        // Names stay names (the resolver checks what they resolve to).
        for url in [
            "http://localhost/",
            "http://LOCALHOST./",
            "http://127.0.0.1.example/",
        ] {
            let parsed = Url::parse(url).unwrap();
            assert_eq!(
                list.check_host(parsed.host_str().unwrap(), 80),
                Ok(HostCheck::Resolve),
                "{url}"
            );
        }
        // Hosts no address parser should accept are rejected by the URL
        // parser itself.
        for url in [
            "http://127.0.0.256/",
            "http://0x100000000/",
            "http://1.2.3.4.5/",
        ] {
            assert!(Url::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn public_hosts_pass_and_the_message_names_the_range() {
        let list = AllowList::default();
        assert_eq!(list.check_host("8.8.8.8", 80), Ok(HostCheck::Address));
        assert_eq!(
            list.check_host("[2001:4860::1]", 443),
            Ok(HostCheck::Address)
        );
        let refused = list.check_host("127.0.0.1", 9).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "127.0.0.1 is a loopback address (127.0.0.0/8, ::1)"
        );
        let mapped = list.check_host("[::ffff:7f00:1]", 9).unwrap_err();
        assert_eq!(
            mapped.to_string(),
            "::ffff:127.0.0.1 is an IPv4-mapped IPv6 address of 127.0.0.1, a loopback address (127.0.0.0/8, ::1)"
        );
        let cgnat = list.check_host("100.100.100.200", 80).unwrap_err();
        assert!(cgnat.to_string().contains("carrier-grade NAT"), "{cgnat}");
        let resolved = list
            .check_resolved("localhost", &[ip("127.0.0.1")])
            .unwrap_err();
        assert_eq!(
            resolved.to_string(),
            "`localhost` resolves to 127.0.0.1, which is a loopback address (127.0.0.0/8, ::1)"
        );
    }

    #[test]
    fn address_and_port_entries_allow_exactly_that_address_and_port() {
        let list = AllowList::parse(["127.0.0.1:8080", "[::1]:9000"]).unwrap();
        assert_eq!(list.check_host("127.0.0.1", 8080), Ok(HostCheck::Address));
        assert!(list.check_host("127.0.0.1", 8081).is_err());
        assert!(list.check_host("127.0.0.2", 8080).is_err());
        // The mapped form of an allowed address is the same address.
        assert_eq!(
            list.check_host("[::ffff:7f00:1]", 8080),
            Ok(HostCheck::Address)
        );
        assert_eq!(list.check_host("[::1]", 9000), Ok(HostCheck::Address));
        assert!(list.check_host("[::1]", 8080).is_err());
        // The resolver does not know the port: an address:port entry never
        // lets a name through.
        assert!(
            list.check_resolved("localhost", &[ip("127.0.0.1")])
                .is_err()
        );
    }

    #[test]
    fn address_and_block_entries_allow_any_port_and_resolved_names() {
        let list = AllowList::parse(["127.0.0.1", "10.0.0.0/8", "fd00::/8"]).unwrap();
        assert_eq!(list.check_host("127.0.0.1", 1), Ok(HostCheck::Address));
        assert_eq!(list.check_host("10.9.8.7", 443), Ok(HostCheck::Address));
        assert_eq!(list.check_host("[fd00::5]", 443), Ok(HostCheck::Address));
        assert!(list.check_host("11.0.0.0", 80).is_ok(), "public anyway");
        assert!(list.check_host("127.0.0.2", 80).is_err());
        assert!(list.check_host("192.168.0.1", 80).is_err());
        assert!(list.check_host("[fc00::1]", 80).is_err());
        assert_eq!(
            list.check_resolved("db.local", &[ip("10.1.1.1"), ip("127.0.0.1")]),
            Ok(())
        );
        // One refused address refuses the name.
        let mixed = list
            .check_resolved("db.local", &[ip("10.1.1.1"), ip("169.254.169.254")])
            .unwrap_err();
        assert_eq!(mixed.range(), Some(Range::LinkLocal));
        assert_eq!(mixed.ip(), Some(ip("169.254.169.254")));
        // A public address next to a refused one does not save the name.
        let list = AllowList::default();
        assert!(
            list.check_resolved("x.example", &[ip("8.8.8.8"), ip("127.0.0.1")])
                .is_err()
        );
        assert_eq!(list.check_resolved("x.example", &[ip("8.8.8.8")]), Ok(()));
    }

    #[test]
    fn name_entries_trust_the_name_on_their_ports() {
        let list = AllowList::parse(["internal.example.com", "Api.Local.:8443"]).unwrap();
        assert_eq!(
            list.check_host("internal.example.com", 1),
            Ok(HostCheck::TrustedName)
        );
        assert_eq!(
            list.check_host("internal.example.com.", 80),
            Ok(HostCheck::TrustedName)
        );
        assert_eq!(
            list.check_host("api.local", 8443),
            Ok(HostCheck::TrustedName)
        );
        assert_eq!(
            list.check_host("api.local", 80),
            Err(Refusal::Port {
                host: "api.local".into(),
                port: 80,
                allowed: vec![8443]
            })
        );
        assert_eq!(
            list.check_host("other.example.com", 80),
            Ok(HostCheck::Resolve)
        );
        assert_eq!(
            list.check_resolved("internal.example.com", &[ip("10.0.0.1")]),
            Ok(())
        );
        assert_eq!(list.check_resolved("API.local", &[ip("127.0.0.1")]), Ok(()));
        assert!(
            list.check_resolved("other.example.com", &[ip("10.0.0.1")])
                .is_err()
        );
        // A name entry says nothing about the addresses it resolves to.
        assert!(list.check_host("10.0.0.1", 80).is_err());
    }

    #[test]
    fn entries_are_validated_and_errors_name_the_entry() {
        let ok = [
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.1.2.3",
            "::1",
            "10.0.0.0/8",
            "fd00::/8",
            "0.0.0.0/0",
            "internal.example.com",
            "internal.example.com:8080",
            "localhost",
        ];
        for entry in ok {
            assert!(entry.parse::<AllowEntry>().is_ok(), "{entry}");
        }
        let bad = [
            ("", "empty"),
            ("http://example.com", "no scheme"),
            ("example.com/path", "not an IP address"),
            ("user@example.com", "no scheme"),
            ("*.example.com", "wildcard"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "prefix length"),
            ("127.0.0.1:0", "not a port"),
            ("127.0.0.1:99999", "not a port"),
            ("example.com:http", "not a port"),
            ("exa mple.com", "spaces"),
            ("a:b:c", "not an address"),
        ];
        for (entry, expected) in bad {
            let err = entry.parse::<AllowEntry>().unwrap_err();
            assert_eq!(err.entry, entry);
            let text = err.to_string();
            assert!(text.starts_with(&format!("`{entry}`")), "{text}");
            assert!(text.contains(expected), "{entry}: {text}");
        }
        let err = AllowList::parse(["127.0.0.1:8080", "nope/1"]).unwrap_err();
        assert_eq!(err.entry, "nope/1");
        // URL-only address forms are read as the address they name.
        let list = AllowList::parse(["127.1:8080"]).unwrap();
        assert_eq!(list.check_host("127.0.0.1", 8080), Ok(HostCheck::Address));
        assert_eq!(list.entries()[0].as_str(), "127.1:8080");
    }
}
