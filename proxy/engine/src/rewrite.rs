//! nginx's `rewrite REGEX REPLACEMENT [last|break|redirect|permanent]` in a
//! route: tried in order on the normalized path; the first that matches
//! rewrites it with its captures (`$1`..`$9`) and variables, and then:
//!
//! - `redirect` / `permanent`, or a replacement starting with `http://`,
//!   `https://` or `$scheme`: the answer is a 302 / 301 to it, the query
//!   string appended unless the replacement ends with `?` (nginx's rule);
//! - `break`: the route goes on with the new path (what it forwards or
//!   serves);
//! - `last`, or no flag: the routes are searched again with the new path, at
//!   most [`MAX_CYCLES`] times (nginx's limit of 10; beyond it, 500).
//!
//! Pure, so `decide` and the sandbox's replay rewrite alike.

use regex::Regex;

use crate::compiled::{HeaderVars, LocationPart};

/// nginx stops after 10 rewrite cycles with a 500.
pub const MAX_CYCLES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    Last,
    Break,
    Redirect,
    Permanent,
    /// No flag: go on with the next rule, then search again.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// `$1`..`$9` (`$0`: the whole match).
    Capture(usize),
    Var(LocationPart),
}

#[derive(Debug)]
pub struct RewriteRule {
    pub regex: Regex,
    pub to: Vec<Part>,
    pub flag: Flag,
    /// The replacement is a redirect (flag, or an absolute target).
    pub redirect: bool,
    /// Append the request's query string to a redirect (no `?` at the end
    /// of the replacement).
    pub keep_args: bool,
}

/// What the route's rules did to a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewritten {
    /// No rule matched.
    Unchanged,
    /// Answer with a redirect.
    Redirect { permanent: bool, location: String },
    /// Go on in this route with this path.
    Break(String),
    /// Search the routes again with this path.
    Again(String),
}

/// Applies `rules` to `path` (nginx's rewrite phase of one location).
pub fn apply(rules: &[RewriteRule], path: &str, vars: &HeaderVars<'_>) -> Rewritten {
    let mut cur = path.to_string();
    let mut changed = false;
    for rule in rules {
        let Some(caps) = rule.regex.captures(&cur) else {
            continue;
        };
        let mut out = String::new();
        for part in &rule.to {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Capture(n) => {
                    if let Some(m) = caps.get(*n) {
                        out.push_str(m.as_str());
                    }
                }
                Part::Var(v) => {
                    out.push_str(&crate::compiled::LocationTemplate(vec![v.clone()]).render(vars))
                }
            }
        }
        if rule.redirect {
            if rule.keep_args
                && let Some(q) = vars.query
            {
                out.push(if out.contains('?') { '&' } else { '?' });
                out.push_str(q);
            }
            return Rewritten::Redirect {
                permanent: rule.flag == Flag::Permanent,
                location: out,
            };
        }
        cur = out;
        changed = true;
        match rule.flag {
            Flag::Break => return Rewritten::Break(cur),
            Flag::Last => return Rewritten::Again(cur),
            _ => {}
        }
    }
    if changed {
        Rewritten::Again(cur)
    } else {
        Rewritten::Unchanged
    }
}

/// Splits a replacement into parts; `None` names the variable it does not
/// know.
pub fn parse_replacement(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        lit.push_str(rest.get(..i).unwrap_or(""));
        let after = rest.get(i.saturating_add(1)..).unwrap_or("");
        let braced = after.starts_with('{');
        let body = if braced {
            after.get(1..).unwrap_or("")
        } else {
            after
        };
        let n = body
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = body.get(..n).unwrap_or("");
        let consumed = if braced {
            if body.get(n..n.saturating_add(1)) != Some("}") {
                return Err(format!("unterminated `${{` in `{text}`"));
            }
            n.saturating_add(2)
        } else {
            n
        };
        if !lit.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut lit)));
        }
        if let Ok(d) = name.parse::<usize>() {
            if d > 9 {
                return Err(format!("`${name}`: captures go from $0 to $9"));
            }
            parts.push(Part::Capture(d));
        } else {
            // `$request_id` would make a redirect differ on every replay.
            let v = match LocationPart::of_variable(name) {
                Some(LocationPart::RequestId) | None => {
                    return Err(format!(
                        "unknown variable `${name}` (use $1..$9, $scheme, $host, $request_uri, $uri, $args, $is_args, $remote_addr)"
                    ));
                }
                Some(v) => v,
            };
            parts.push(Part::Var(v));
        }
        rest = after.get(consumed..).unwrap_or("");
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Literal(lit));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(query: Option<&str>) -> HeaderVars<'_> {
        HeaderVars {
            method: &http::Method::GET,
            scheme: "http",
            host: "a.test",
            path: "/",
            request_path: "/",
            query,
            headers: Box::leak(Box::new(http::HeaderMap::new())),
            client_ip: "127.0.0.1".parse().unwrap(),
            request_id: "",
            maps: &[],
        }
    }

    fn rule(re: &str, to: &str, flag: Flag) -> RewriteRule {
        let redirect = matches!(flag, Flag::Redirect | Flag::Permanent)
            || to.starts_with("http://")
            || to.starts_with("https://")
            || to.starts_with("$scheme");
        let keep_args = !to.ends_with('?');
        RewriteRule {
            regex: Regex::new(re).unwrap(),
            to: parse_replacement(to.strip_suffix('?').unwrap_or(to)).unwrap(),
            flag,
            redirect,
            keep_args,
        }
    }

    #[test]
    fn captures_flags_and_query_strings() {
        let trailing = [rule("^(.+)/+$", "$1", Flag::Permanent)];
        assert_eq!(
            apply(&trailing, "/c/x/", &vars(Some("page=2"))),
            Rewritten::Redirect {
                permanent: true,
                location: "/c/x?page=2".into()
            }
        );
        assert_eq!(apply(&trailing, "/c/x", &vars(None)), Rewritten::Unchanged);
        let internal = [
            rule("^/old/(.*)$", "/new/$1", Flag::None),
            rule("^/new/(a)$", "/final/${1}", Flag::Break),
        ];
        assert_eq!(
            apply(&internal, "/old/a", &vars(None)),
            Rewritten::Break("/final/a".into())
        );
        assert_eq!(
            apply(&internal, "/old/b", &vars(None)),
            Rewritten::Again("/new/b".into())
        );
        let dropped_args = [rule("^/x$", "https://$host/y?", Flag::None)];
        assert_eq!(
            apply(&dropped_args, "/x", &vars(Some("q=1"))),
            Rewritten::Redirect {
                permanent: false,
                location: "https://a.test/y".into()
            }
        );
        assert!(parse_replacement("/$nope").is_err());
    }
}
