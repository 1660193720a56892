//! What the import could not carry over exactly, located at `file:line`.

use std::fmt;

use crate::parse::Loc;

/// How much a finding matters to someone replacing nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Impact {
    /// The directive was not carried over and clients would see a
    /// difference. The import fails unless `--allow-partial`.
    Dropped,
    /// Carried over with a documented difference in some cases.
    Differs,
    /// Not carried over, and it changes nothing a client sees (process
    /// settings, buffers, logging...).
    Ignored,
    /// Carried over exactly. Listed in the report too, so that every
    /// directive of the input appears in it exactly once.
    Carried,
}

impl Impact {
    pub fn label(self) -> &'static str {
        match self {
            Impact::Dropped => "dropped",
            Impact::Differs => "differs",
            Impact::Ignored => "ignored",
            Impact::Carried => "carried",
        }
    }
}

/// One directive that was not carried over exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub at: Loc,
    /// The directive as written (abbreviated).
    pub directive: String,
    pub impact: Impact,
    pub reason: String,
    /// The left-out feature (one of [`LEFT_OUT`]) this drop is a
    /// consequence of, when the importer knows it from context rather than
    /// from the directive's name: everything in a FastCGI location, a
    /// `try_files` whose fallback is one. Children of a dropped block
    /// inherit it.
    pub left_out: Option<&'static str>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: `{}`: {}",
            self.at,
            self.impact.label(),
            self.directive,
            self.reason
        )
    }
}

/// The nginx features Aegis leaves out (docs/nginx-migration.md, "What
/// Aegis leaves out"), each named as the import report names it.
pub const LEFT_OUT: &[&str] = &[
    "response caching (proxy_cache)",
    "authentication (auth_basic, auth_request)",
    "FastCGI, uwsgi and SCGI backends",
    "server-side includes (ssi)",
    "rewrite-module scripting (if, set)",
    "bandwidth and connection limits (limit_rate, limit_conn)",
    "TLS to upstreams (proxy_pass https://)",
    "request shaping (proxy_method, proxy_pass_request_body/headers)",
];

/// [`LEFT_OUT`]'s FastCGI, uwsgi and SCGI entry.
pub const FASTCGI: usize = 2;

/// [`LEFT_OUT`]'s rewrite-module scripting entry.
pub const SCRIPTING: usize = 4;

/// The left-out feature (one of [`LEFT_OUT`]) a dropped directive belongs
/// to, from its name and text; `None` for a directive Aegis could carry
/// one day. A directive dropped because the block it is in was
/// (`inside `if (...)` ...`) belongs to that block's feature.
pub fn left_out_feature(f: &Finding) -> Option<&'static str> {
    if f.impact != Impact::Dropped {
        return None;
    }
    if f.left_out.is_some() {
        return f.left_out;
    }
    let text = match f.reason.strip_prefix("inside `") {
        Some(parent) => parent.split('`').next().unwrap_or(""),
        None => f.directive.as_str(),
    };
    let name = text.split_whitespace().next().unwrap_or("");
    let arg = text.split_whitespace().nth(1).unwrap_or("");
    let idx = if name.starts_with("proxy_cache")
        || matches!(name, "proxy_no_cache" | "proxy_ignore_headers")
        || (name == "add_header" && text.contains("$upstream_cache_status"))
    {
        0
    } else if name.starts_with("auth_") || name == "satisfy" {
        1
    } else if ["fastcgi_", "uwsgi_", "scgi_"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        2
    } else if name == "ssi" || name.starts_with("ssi_") {
        3
    } else if matches!(name, "if" | "set" | "break") {
        4
    } else if name.starts_with("limit_rate") || name.starts_with("limit_conn") {
        5
    } else if (name == "proxy_pass" && arg.starts_with("https://")) || name.starts_with("proxy_ssl")
    {
        6
    } else if matches!(
        name,
        "proxy_method" | "proxy_pass_request_body" | "proxy_pass_request_headers"
    ) {
        7
    } else {
        return None;
    };
    LEFT_OUT.get(idx).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped(directive: &str, reason: &str) -> Finding {
        Finding {
            at: Loc {
                file: "t.conf".into(),
                line: 1,
            },
            directive: directive.into(),
            impact: Impact::Dropped,
            reason: reason.into(),
            left_out: None,
        }
    }

    #[test]
    fn left_out_features_by_directive() {
        let of = |d: &str, r: &str| left_out_feature(&dropped(d, r));
        assert_eq!(
            of("proxy_cache_valid 200 7d", ""),
            LEFT_OUT.first().copied()
        );
        assert_eq!(
            of("add_header X-Cached $upstream_cache_status", ""),
            LEFT_OUT.first().copied()
        );
        assert_eq!(of("auth_request /check", ""), LEFT_OUT.get(1).copied());
        assert_eq!(of("fastcgi_pass php", ""), LEFT_OUT.get(2).copied());
        assert_eq!(of("proxy_pass https://a/", ""), LEFT_OUT.get(6).copied());
        // A directive inside a dropped `if` is that `if`'s.
        assert_eq!(
            of(
                "return 204",
                "inside `if ($request_method = OPTIONS )` (t.conf:3), which is dropped"
            ),
            LEFT_OUT.get(4).copied()
        );
        // Features Aegis has or could have are not "left out".
        assert_eq!(of("proxy_pass http://$x", ""), None);
        assert_eq!(of("add_header X $foo", ""), None);
        assert_eq!(of("location ~ ^/a", ""), None);
        let mut carried = dropped("proxy_cache one", "");
        carried.impact = Impact::Carried;
        assert_eq!(left_out_feature(&carried), None);
    }
}
