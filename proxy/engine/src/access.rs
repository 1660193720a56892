//! Who may use a route, by client address (nginx `allow`/`deny` and
//! `limit_except`), and who the client is behind trusted proxies (nginx
//! `set_real_ip_from`/`real_ip_header`/`real_ip_recursive`).
//!
//! Both are pure functions of the compiled config and the request head, so
//! `decide` and the sandbox's replay see the same answer as the data plane.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;

/// One `allow` or `deny` line; `None` is `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Allow(Option<IpNet>),
    Deny(Option<IpNet>),
}

/// An ordered list of rules: the first that matches the client decides, as
/// in nginx; a client no rule matches is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules(pub Vec<Rule>);

impl AccessRules {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`;
        // nginx matches it against IPv4 rules, and so do we.
        let ip = ip.to_canonical();
        for rule in &self.0 {
            let (allow, net) = match rule {
                Rule::Allow(n) => (true, n),
                Rule::Deny(n) => (false, n),
            };
            if net.is_none_or(|n| n.contains(&ip)) {
                return allow;
            }
        }
        true
    }
}

/// nginx `limit_except METHODS { rules }`: the listed methods (GET brings
/// HEAD) pass under the route's own rules; any other method is judged by
/// these rules, or by the route's own when these are empty (nginx's
/// inheritance into the `limit_except` block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExcept {
    pub methods: Vec<Method>,
    pub rules: AccessRules,
}

/// A route's access control, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteAccess {
    pub rules: AccessRules,
    pub limit_except: Option<LimitExcept>,
}

impl RouteAccess {
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.limit_except.is_none()
    }

    /// Whether `method` from `ip` may use the route (else 403).
    pub fn allows(&self, method: &Method, ip: IpAddr) -> bool {
        match &self.limit_except {
            Some(le) if !listed(&le.methods, method) => {
                if le.rules.is_empty() {
                    self.rules.allows(ip)
                } else {
                    le.rules.allows(ip)
                }
            }
            _ => self.rules.allows(ip),
        }
    }
}

fn listed(methods: &[Method], method: &Method) -> bool {
    methods.contains(method) || (*method == Method::HEAD && methods.contains(&Method::GET))
}

/// nginx's realip module: when the connection comes from a trusted proxy,
/// the client address is taken from a header that proxy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealIp {
    /// `set_real_ip_from`: the proxies whose header is believed.
    pub from: Vec<IpNet>,
    /// `real_ip_header` (default `x-real-ip`, as nginx).
    pub header: HeaderName,
    /// `real_ip_recursive on`: in `X-Forwarded-For`, skip trusted addresses
    /// from the right, and take the first untrusted one (the leftmost when
    /// all are trusted). Off: the last address.
    pub recursive: bool,
}

impl RealIp {
    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.from.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that arrived from `peer`. Anything
    /// that does not parse leaves the address where the walk stopped, as
    /// nginx does.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let mut client = peer;
        // Every line of the header, in order, as one comma-separated list;
        // walked from the right (the address nearest to us first).
        let lines: Vec<&[u8]> = headers
            .get_all(&self.header)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        for line in lines.iter().rev() {
            let Ok(text) = std::str::from_utf8(line) else {
                return client;
            };
            for item in text.rsplit(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let Some(ip) = parse_addr(item) else {
                    return client;
                };
                client = ip;
                if !self.recursive || !self.trusted(ip) {
                    return client;
                }
            }
        }
        client
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
/// `[::1]:5678`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Option<IpNet> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn first_matching_rule_decides() {
        let r = AccessRules(vec![
            Rule::Deny(net("10.1.0.0/16")),
            Rule::Allow(net("10.0.0.0/8")),
            Rule::Deny(None),
        ]);
        assert!(r.allows("10.2.3.4".parse().unwrap()));
        assert!(!r.allows("10.1.3.4".parse().unwrap()));
        assert!(!r.allows("192.0.2.1".parse().unwrap()));
        assert!(r.allows("::ffff:10.2.3.4".parse().unwrap()));
        assert!(AccessRules::default().allows("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn limit_except_judges_the_other_methods() {
        let a = RouteAccess {
            rules: AccessRules::default(),
            limit_except: Some(LimitExcept {
                methods: vec![Method::GET],
                rules: AccessRules(vec![Rule::Deny(None)]),
            }),
        };
        let ip = "192.0.2.1".parse().unwrap();
        assert!(a.allows(&Method::GET, ip));
        assert!(a.allows(&Method::HEAD, ip));
        assert!(!a.allows(&Method::POST, ip));
    }

    #[test]
    fn real_ip_walks_forwarded_for_from_the_right() {
        let r = RealIp {
            from: vec!["10.0.0.0/8".parse().unwrap()],
            header: HeaderName::from_static("x-forwarded-for"),
            recursive: true,
        };
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(r.client(peer, &h), "203.0.113.9".parse::<IpAddr>().unwrap());
        // An untrusted peer's header is not believed.
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(r.client(stranger, &h), stranger);
        // Not recursive: the last address, trusted or not.
        let flat = RealIp {
            recursive: false,
            ..r.clone()
        };
        assert_eq!(flat.client(peer, &h), "10.0.0.2".parse::<IpAddr>().unwrap());
        // Garbage stops the walk where it is.
        h.insert("x-forwarded-for", "junk, 10.0.0.2".parse().unwrap());
        assert_eq!(r.client(peer, &h), "10.0.0.2".parse::<IpAddr>().unwrap());
    }
}
