//! One `/metrics` for the whole proxy: each worker's Prometheus text with a
//! `worker` label added to every sample, HELP and TYPE lines kept once.
//! Summing across workers is left to the query (`sum without (worker)`),
//! which keeps per-worker figures visible when one misbehaves.

use std::collections::HashSet;

pub fn merge(texts: &[(usize, String)]) -> String {
    let mut out = String::new();
    let mut seen_meta = HashSet::new();
    for (slot, text) in texts {
        for line in text.lines() {
            if line.starts_with('#') {
                if seen_meta.insert(line.to_string()) {
                    out.push_str(line);
                    out.push('\n');
                }
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            out.push_str(&with_label(line, *slot));
            out.push('\n');
        }
    }
    out
}

/// `name{a="b"} 1` → `name{worker="3",a="b"} 1`; `name 1` → `name{worker="3"} 1`.
fn with_label(line: &str, slot: usize) -> String {
    let label = format!("worker=\"{slot}\"");
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    match rest.strip_prefix('{') {
        Some(inner) if inner.starts_with('}') => format!("{name}{{{label}{inner}"),
        Some(inner) => format!("{name}{{{label},{inner}"),
        None => format!("{name}{{{label}}}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_worker_label() {
        let a = "# TYPE x counter\nx{route=\"a\"} 1\ny 2\n";
        let b = "# TYPE x counter\nx{route=\"a\"} 5\n";
        let m = merge(&[(0, a.to_string()), (1, b.to_string())]);
        assert_eq!(
            m,
            "# TYPE x counter\nx{worker=\"0\",route=\"a\"} 1\ny{worker=\"0\"} 2\nx{worker=\"1\",route=\"a\"} 5\n"
        );
    }
}
