//! Route lookup that does not grow with the number of routes.
//!
//! Precedence follows nginx, so that an nginx config maps onto it:
//!
//! 1. **Host** picks one group of routes, like nginx picks a `server`: an
//!    exact host first, then the longest matching `*.suffix` wildcard, then
//!    the routes that name no host. A request is matched only against the
//!    routes of that group; there is no fall-through to another group.
//! 2. Inside the group, an **exact path** (`match.path`) wins at once.
//! 3. Otherwise the **longest matching prefix** is remembered. If it has
//!    `stop_regex` (nginx `^~`), it wins.
//! 4. Otherwise **regex** routes are tried in the order they were declared;
//!    the first that matches wins.
//! 5. Otherwise the longest prefix from step 3 wins, if any.
//!
//! Regexes nested in nginx locations ([`Inside`]) keep nginx's order: the
//! ones inside the longest prefix of step 3 are tried before every other
//! regex (and only when that prefix is the longest); the ones inside a
//! regex are tried when that regex has matched, before it answers.
//!
//! Several routes may share one path key and differ by `methods` or
//! `headers`; at a key they are tried in declaration order and the first
//! whose conditions hold is the candidate of that key (for prefixes, a
//! shorter prefix is tried when no route of a longer one qualifies).
//!
//! Data structures: a hash map for exact hosts, a hash map of suffixes for
//! wildcards (one probe per label of the request's host), a hash map for
//! exact paths, a byte trie for prefixes (one step per byte of the path) and a
//! `RegexSet` per group for regexes (one pass over the path for all of them).

use std::collections::HashMap as StdHashMap;

use regex::{Regex, RegexSet};

/// Host and path keys come from clients, so the hasher must resist
/// collision floods; foldhash is seeded per process and several times
/// faster than SipHash on short keys.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;

/// Up to this many regex routes in a group are tried one by one (each has
/// its own literal prefilter, which rejects most paths in nanoseconds); above
/// it, one `RegexSet` pass finds the candidates.
const SEQUENTIAL_REGEX_LIMIT: usize = 16;

use crate::compiled::RouteId;

/// Builds a [`RouteTable`].
///
/// Routes may name the local ports they serve (`match.ports`, nginx's
/// `listen`): nginx first picks the servers of the listen socket a request
/// came in on, then the server by name among those. So each port that any
/// route names gets a table of its own, holding the routes that name that
/// port and the routes that name no port, in declaration order; a request
/// on a port no route names (or from a sample without ports) uses the table
/// of the port-less routes. A config without `ports` has only that one.
#[derive(Debug, Default)]
pub struct RouteTableBuilder {
    any: HostTableBuilder,
    by_port: std::collections::BTreeMap<u16, HostTableBuilder>,
    /// The port-less routes added so far, replayed into a port's table when
    /// the first route naming that port arrives, so declaration order holds.
    portless: Vec<(OwnedHostKey, PathKey, RouteId)>,
}

#[derive(Debug, Clone)]
enum OwnedHostKey {
    Any,
    Exact(String),
    Wildcard(String),
}

impl OwnedHostKey {
    fn of(host: &HostKey<'_>) -> Self {
        match host {
            HostKey::Any => Self::Any,
            HostKey::Exact(h) => Self::Exact((*h).to_string()),
            HostKey::Wildcard(s) => Self::Wildcard((*s).to_string()),
        }
    }

    fn key(&self) -> HostKey<'_> {
        match self {
            Self::Any => HostKey::Any,
            Self::Exact(h) => HostKey::Exact(h),
            Self::Wildcard(s) => HostKey::Wildcard(s),
        }
    }
}

impl RouteTableBuilder {
    /// Adds a route under one host pattern, on the given local ports (empty:
    /// every port). Routes must be added in declaration order (it decides
    /// regex order and ties).
    pub fn add(&mut self, ports: &[u16], host: HostKey<'_>, key: &PathKey, route: RouteId) {
        if ports.is_empty() {
            self.any.add(&host, key, route);
            for t in self.by_port.values_mut() {
                t.add(&host, key, route);
            }
            self.portless
                .push((OwnedHostKey::of(&host), key.clone(), route));
            return;
        }
        for port in ports {
            let portless = &self.portless;
            let t = self.by_port.entry(*port).or_insert_with(|| {
                let mut t = HostTableBuilder::default();
                for (h, k, r) in portless {
                    t.add(&h.key(), k, *r);
                }
                t
            });
            t.add(&host, key, route);
        }
    }

    /// Compiles the table. `regex_set_limit` bounds the size of each group's
    /// combined `RegexSet`; a group whose set would be larger falls back to
    /// trying its regexes one by one (slower, still correct).
    pub fn build(self, regex_set_limit: usize) -> RouteTable {
        RouteTable {
            any: self.any.build(regex_set_limit),
            by_port: self
                .by_port
                .into_iter()
                .map(|(p, t)| (p, t.build(regex_set_limit)))
                .collect(),
        }
    }
}

/// The routes of one listen port (or of every port): host groups.
#[derive(Debug, Default)]
struct HostTableBuilder {
    groups: Vec<GroupBuilder>,
    exact_hosts: HashMap<String, usize>,
    wildcard_hosts: HashMap<String, usize>,
    any_host: Option<usize>,
}

#[derive(Debug, Default)]
struct GroupBuilder {
    exact: HashMap<String, Vec<RouteId>>,
    prefixes: Vec<(String, bool, RouteId)>,
    regexes: Vec<RegexEntry>,
}

#[derive(Debug, Clone)]
struct RegexEntry {
    re: Regex,
    route: RouteId,
    inside: Option<Inside>,
}

/// Where a route sits in the table.
#[derive(Debug, Clone)]
pub enum PathKey {
    Exact(String),
    Prefix {
        prefix: String,
        stop_regex: bool,
    },
    Regex(Regex),
    /// A regex of an nginx location nested in another.
    NestedRegex {
        re: Regex,
        inside: Inside,
    },
}

/// The location an nginx regex location is nested in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inside {
    /// `location /p { location ~ re {} }`: tried only when `/p` is the
    /// longest matching prefix, before the other regexes.
    Prefix(String),
    /// `location ~ outer { location ~ re {} }`: tried only when `outer`
    /// (the pattern as written) has matched, before it answers.
    Regex(String),
}

/// A host pattern: `None` for any host.
pub enum HostKey<'a> {
    Any,
    Exact(&'a str),
    /// The suffix after `*`, including the leading dot: `.example.com`.
    Wildcard(&'a str),
}

impl HostTableBuilder {
    fn group_for(&mut self, host: &HostKey<'_>) -> usize {
        let next = self.groups.len();
        let slot = match host {
            HostKey::Any => {
                let g = *self.any_host.get_or_insert(next);
                return self.ensure(g);
            }
            HostKey::Exact(h) => self
                .exact_hosts
                .entry(h.to_ascii_lowercase())
                .or_insert(next),
            HostKey::Wildcard(s) => self
                .wildcard_hosts
                .entry(s.to_ascii_lowercase())
                .or_insert(next),
        };
        let g = *slot;
        self.ensure(g)
    }

    fn ensure(&mut self, g: usize) -> usize {
        while self.groups.len() <= g {
            self.groups.push(GroupBuilder::default());
        }
        g
    }

    fn add(&mut self, host: &HostKey<'_>, key: &PathKey, route: RouteId) {
        let g = self.group_for(host);
        let Some(group) = self.groups.get_mut(g) else {
            return;
        };
        match key {
            PathKey::Exact(p) => group.exact.entry(p.clone()).or_default().push(route),
            PathKey::Prefix { prefix, stop_regex } => {
                group.prefixes.push((prefix.clone(), *stop_regex, route));
            }
            PathKey::Regex(re) => group.regexes.push(RegexEntry {
                re: re.clone(),
                route,
                inside: None,
            }),
            PathKey::NestedRegex { re, inside } => group.regexes.push(RegexEntry {
                re: re.clone(),
                route,
                inside: Some(inside.clone()),
            }),
        }
    }

    fn build(self, regex_set_limit: usize) -> HostTable {
        let groups = self
            .groups
            .into_iter()
            .map(|g| {
                let mut trie = PrefixTrie::default();
                for (prefix, stop, route) in &g.prefixes {
                    trie.insert(prefix.as_bytes(), *route, *stop);
                }
                let set = if g.regexes.len() <= SEQUENTIAL_REGEX_LIMIT {
                    None
                } else {
                    regex::RegexSetBuilder::new(g.regexes.iter().map(|e| e.re.as_str()))
                        .size_limit(regex_set_limit)
                        .build()
                        .ok()
                };
                let nested = g.regexes.iter().any(|e| e.inside.is_some());
                PathTable {
                    exact: g.exact,
                    trie,
                    regex_set: set,
                    regexes: g.regexes,
                    nested,
                }
            })
            .collect();
        HostTable {
            groups,
            exact_hosts: self.exact_hosts,
            wildcard_hosts: self.wildcard_hosts,
            any_host: self.any_host,
        }
    }
}

/// The compiled lookup structure of a config.
#[derive(Debug, Default)]
pub struct RouteTable {
    any: HostTable,
    by_port: HashMap<u16, HostTable>,
}

impl RouteTable {
    /// The route for a request that arrived on local `port` (0: unknown),
    /// for `host` and `path`, given a predicate that checks a route's method
    /// and header conditions.
    pub fn lookup(
        &self,
        port: u16,
        host: &str,
        path: &str,
        qualifies: impl Fn(RouteId) -> bool,
    ) -> Option<RouteId> {
        self.by_port
            .get(&port)
            .unwrap_or(&self.any)
            .lookup(host, path, qualifies)
    }

    /// Number of host groups of the port-less table (for summaries and tests).
    pub fn group_count(&self) -> usize {
        self.any.groups.len()
    }

    /// The local ports that have a table of their own.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.by_port.keys().copied()
    }
}

#[derive(Debug, Default)]
struct HostTable {
    groups: Vec<PathTable>,
    exact_hosts: HashMap<String, usize>,
    wildcard_hosts: HashMap<String, usize>,
    any_host: Option<usize>,
}

#[derive(Debug)]
struct PathTable {
    exact: HashMap<String, Vec<RouteId>>,
    trie: PrefixTrie,
    regex_set: Option<RegexSet>,
    regexes: Vec<RegexEntry>,
    /// Some regex is nested ([`Inside`]): lookups take the nginx order.
    nested: bool,
}

impl HostTable {
    /// The group for a normalized (lower-case, port-less) host.
    fn group(&self, host: &str) -> Option<&PathTable> {
        let g = self.exact_hosts.get(host).copied().or_else(|| {
            // Longest wildcard first: try suffixes starting at each dot, left to right.
            host.char_indices()
                .filter(|(_, c)| *c == '.')
                .find_map(|(i, _)| {
                    host.get(i..)
                        .and_then(|s| self.wildcard_hosts.get(s))
                        .copied()
                })
        });
        g.or(self.any_host).and_then(|g| self.groups.get(g))
    }

    fn lookup(
        &self,
        host: &str,
        path: &str,
        qualifies: impl Fn(RouteId) -> bool,
    ) -> Option<RouteId> {
        let table = self.group(host)?;
        if let Some(routes) = table.exact.get(path)
            && let Some(r) = routes.iter().copied().find(|r| qualifies(*r))
        {
            return Some(r);
        }
        let best_prefix = table.trie.longest(path.as_bytes(), &qualifies);
        if let Some((route, true, _)) = best_prefix {
            return Some(route);
        }
        if table.nested {
            let prefix = best_prefix.and_then(|(_, _, len)| path.get(..len));
            if let Some(r) = table.nested_lookup(path, prefix, &qualifies) {
                return Some(r);
            }
        } else if !table.regexes.is_empty() {
            let found = match &table.regex_set {
                Some(set) if !set.is_match(path) => None,
                Some(set) => set
                    .matches(path)
                    .iter()
                    .filter_map(|i| table.regexes.get(i))
                    .map(|e| e.route)
                    .find(|r| qualifies(*r)),
                None => table
                    .regexes
                    .iter()
                    .find(|e| e.re.is_match(path) && qualifies(e.route))
                    .map(|e| e.route),
            };
            if found.is_some() {
                return found;
            }
        }
        best_prefix.map(|(r, _, _)| r)
    }
}

impl PathTable {
    /// The regex step in nginx's order when some regexes are nested:
    /// those inside the longest prefix first, then the others in
    /// declaration order, each regex's own nested ones before it answers.
    fn nested_lookup(
        &self,
        path: &str,
        prefix: Option<&str>,
        qualifies: &impl Fn(RouteId) -> bool,
    ) -> Option<RouteId> {
        let hits = self.regex_set.as_ref().map(|s| s.matches(path));
        let hit = |i: usize, e: &RegexEntry| match &hits {
            Some(m) => m.matched(i),
            None => e.re.is_match(path),
        };
        let entries = || self.regexes.iter().enumerate();
        // A matched regex answers, unless one nested in it matches too.
        let answer = |e: &RegexEntry| {
            let outer = e.re.as_str();
            entries()
                .find(|(j, n)| {
                    matches!(&n.inside, Some(Inside::Regex(x)) if x == outer)
                        && hit(*j, n)
                        && qualifies(n.route)
                })
                .map_or(e.route, |(_, n)| n.route)
        };
        if let Some(p) = prefix {
            let inner = entries().find(|(i, e)| {
                matches!(&e.inside, Some(Inside::Prefix(x)) if x == p)
                    && hit(*i, e)
                    && qualifies(e.route)
            });
            if let Some((_, e)) = inner {
                return Some(answer(e));
            }
        }
        entries()
            .find(|(i, e)| e.inside.is_none() && hit(*i, e) && qualifies(e.route))
            .map(|(_, e)| answer(e))
    }
}

/// A byte trie over route prefixes. Children are kept sorted by byte and
/// found by binary search; nodes live in one vector.
#[derive(Debug)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    /// Routes whose prefix ends here, in declaration order, with `stop_regex`.
    routes: Vec<(RouteId, bool)>,
}

impl Default for PrefixTrie {
    fn default() -> Self {
        Self {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl PrefixTrie {
    fn insert(&mut self, key: &[u8], route: RouteId, stop: bool) {
        let mut at: usize = 0;
        for b in key {
            let next_id = self.nodes.len();
            let Some(node) = self.nodes.get_mut(at) else {
                return;
            };
            at = match node.children.binary_search_by_key(b, |(c, _)| *c) {
                Ok(i) => node.children.get(i).map(|(_, n)| *n as usize).unwrap_or(0),
                Err(i) => {
                    let Ok(id) = u32::try_from(next_id) else {
                        return;
                    };
                    node.children.insert(i, (*b, id));
                    self.nodes.push(TrieNode::default());
                    next_id
                }
            };
        }
        if let Some(node) = self.nodes.get_mut(at) {
            node.routes.push((route, stop));
        }
    }

    /// The longest prefix of `path` with a qualifying route: the route,
    /// its `stop_regex` and the prefix's length.
    fn longest(
        &self,
        path: &[u8],
        qualifies: &impl Fn(RouteId) -> bool,
    ) -> Option<(RouteId, bool, usize)> {
        let mut best = None;
        let mut at: usize = 0;
        let pick = |node: &TrieNode, len: usize| {
            node.routes
                .iter()
                .copied()
                .find(|(r, _)| qualifies(*r))
                .map(|(r, stop)| (r, stop, len))
        };
        if let Some(node) = self.nodes.first() {
            best = pick(node, 0).or(best);
        }
        for (depth, b) in path.iter().enumerate() {
            let Some(node) = self.nodes.get(at) else {
                break;
            };
            match node.children.binary_search_by_key(b, |(c, _)| *c) {
                Ok(i) => match node.children.get(i) {
                    Some((_, n)) => at = *n as usize,
                    None => break,
                },
                Err(_) => break,
            }
            if let Some(node) = self.nodes.get(at) {
                best = pick(node, depth.saturating_add(1)).or(best);
            }
        }
        best
    }
}
