//! One `/metrics` for the whole proxy: each worker's Prometheus text with a
//! `worker` label added to every sample, the supervisor's own samples as
//! they are. Summing across workers is left to the query (`sum without
//! (worker)`), which keeps per-worker figures visible when one misbehaves.
//!
//! The exposition format wants each family in one group (its `# HELP` and
//! `# TYPE` once, then all its samples), so the texts are not concatenated:
//! samples are gathered by family across every source, then written family
//! by family, in name order (a stable order diffs well between scrapes).

use std::collections::BTreeMap;

#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merges Prometheus texts: `(Some(slot), text)` is a worker's (its samples
/// get `worker="slot"`), `(None, text)` is kept unlabelled (the supervisor's
/// own, or text merged already). Comments other than HELP and TYPE are
/// dropped; the first HELP and TYPE of a family win.
pub fn merge(sources: &[(Option<usize>, &str)]) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    // Declarations first, from every source: a histogram's `_bucket`,
    // `_sum` and `_count` samples belong to the family its TYPE names.
    for (_, text) in sources {
        for line in text.lines() {
            if let Some((name, value)) = line.strip_prefix("# HELP ").and_then(split_name) {
                families
                    .entry(name.to_string())
                    .or_default()
                    .help
                    .get_or_insert_with(|| value.to_string());
            } else if let Some((name, value)) = line.strip_prefix("# TYPE ").and_then(split_name) {
                families
                    .entry(name.to_string())
                    .or_default()
                    .kind
                    .get_or_insert_with(|| value.trim().to_string());
            }
        }
    }
    for (worker, text) in sources {
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let family = family_of(sample_name(line), &families).to_string();
            let sample = match worker {
                Some(slot) => with_label(line, *slot),
                None => line.to_string(),
            };
            families.entry(family).or_default().samples.push(sample);
        }
    }
    let mut out = String::new();
    for (name, f) in &families {
        // A declaration without samples (a family another source has, or
        // none has yet) says nothing and would be an empty group.
        if f.samples.is_empty() {
            continue;
        }
        if let Some(help) = &f.help {
            out.push_str(&format!("# HELP {name} {help}\n"));
        }
        if let Some(kind) = &f.kind {
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        }
        for s in &f.samples {
            out.push_str(s);
            out.push('\n');
        }
    }
    out
}

/// `name rest` → (`name`, `rest`).
fn split_name(decl: &str) -> Option<(&str, &str)> {
    let (name, rest) = decl.split_once(' ').unwrap_or((decl, ""));
    (!name.is_empty()).then_some((name, rest))
}

/// The metric name of a sample line (up to its labels or value).
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    line.get(..end).unwrap_or(line)
}

/// The family a sample belongs to: its own name when declared, else a
/// declared histogram or summary it is a `_bucket`/`_sum`/`_count` of, else
/// its own name (an undeclared family of its own).
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, Family>) -> &'a str {
    if families.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families
                .get(base)
                .and_then(|f| f.kind.as_deref())
                .is_some_and(|k| k == "histogram" || k == "summary")
        {
            return base;
        }
    }
    name
}

/// `name{a="b"} 1` → `name{worker="3",a="b"} 1`; `name 1` → `name{worker="3"} 1`.
fn with_label(line: &str, slot: usize) -> String {
    let label = format!("worker=\"{slot}\"");
    let (name, rest) = line
        .split_at_checked(sample_name(line).len())
        .unwrap_or((line, ""));
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
        let a = "# TYPE x counter\nx{route=\"a\"} 1\ny 2\nz{} 3\n";
        let b = "# TYPE x counter\nx{route=\"a\"} 5\n";
        let m = merge(&[(Some(0), a), (Some(1), b)]);
        assert_eq!(
            m,
            "# TYPE x counter\nx{worker=\"0\",route=\"a\"} 1\nx{worker=\"1\",route=\"a\"} 5\n\
             y{worker=\"0\"} 2\nz{worker=\"0\"} 3\n"
        );
    }

    /// Each family once, with all its samples together: the supervisor's
    /// unlabelled ones first, then every worker's, whatever order the
    /// families came in from each process.
    #[test]
    fn groups_each_family_across_processes() {
        let sup = "# HELP aegis_b_total B\n# TYPE aegis_b_total counter\naegis_b_total 7\n\n\
                   # HELP aegis_a A\n# TYPE aegis_a gauge\naegis_a 1\n";
        let w0 = "# HELP aegis_a A\n# TYPE aegis_a gauge\naegis_a{v=\"x\"} 2\n\n\
                  # HELP aegis_c_total C\n# TYPE aegis_c_total counter\naegis_c_total 3\n";
        let w1 = "# HELP aegis_c_total C\n# TYPE aegis_c_total counter\naegis_c_total 4\n\n\
                  # TYPE aegis_a gauge\naegis_a{v=\"x\"} 5\n";
        let m = merge(&[(None, sup), (Some(0), w0), (Some(1), w1)]);
        assert_eq!(
            m,
            "# HELP aegis_a A\n# TYPE aegis_a gauge\naegis_a 1\naegis_a{worker=\"0\",v=\"x\"} 2\naegis_a{worker=\"1\",v=\"x\"} 5\n\
             # HELP aegis_b_total B\n# TYPE aegis_b_total counter\naegis_b_total 7\n\
             # HELP aegis_c_total C\n# TYPE aegis_c_total counter\naegis_c_total{worker=\"0\"} 3\naegis_c_total{worker=\"1\"} 4\n"
        );
    }

    #[test]
    fn histogram_samples_stay_with_their_family() {
        let w = "# HELP d_seconds D\n# TYPE d_seconds histogram\n\
                 d_seconds_bucket{le=\"0.5\"} 1\nd_seconds_bucket{le=\"+Inf\"} 2\n\
                 d_seconds_sum 0.7\nd_seconds_count 2\n\n\
                 # TYPE d_seconds_total counter\nd_seconds_total 9\n";
        let m = merge(&[(Some(0), w), (Some(1), w)]);
        let lines: Vec<&str> = m.lines().collect();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("# TYPE d_seconds "))
                .count(),
            1
        );
        // The histogram's 8 samples follow its TYPE, before any other family.
        let at = lines
            .iter()
            .position(|l| *l == "# TYPE d_seconds histogram")
            .unwrap();
        assert!(
            lines[at + 1..at + 9]
                .iter()
                .all(|l| l.starts_with("d_seconds_") && !l.starts_with("d_seconds_total"))
        );
        assert!(
            lines[at + 1..at + 9]
                .iter()
                .filter(|l| l.contains("worker=\"1\""))
                .count()
                == 4
        );
        assert!(m.contains("# TYPE d_seconds_total counter\nd_seconds_total{worker=\"0\"} 9\nd_seconds_total{worker=\"1\"} 9\n"));
    }

    /// Merging merged text again (the admin listener merges the supervisor's
    /// own text with the workers' merged one) changes nothing but the order.
    #[test]
    fn merging_is_idempotent() {
        let w0 = "# HELP x_total X\n# TYPE x_total counter\nx_total{r=\"a\"} 1\n";
        let w1 = "# HELP x_total X\n# TYPE x_total counter\nx_total{r=\"a\"} 2\n";
        let once = merge(&[(Some(0), w0), (Some(1), w1)]);
        let twice = merge(&[(None, ""), (None, once.as_str())]);
        assert_eq!(once, twice);
    }

    #[test]
    fn declarations_without_samples_are_dropped() {
        let m = merge(&[(
            Some(0),
            "# HELP lonely L\n# TYPE lonely gauge\n# a comment\n",
        )]);
        assert_eq!(m, "");
    }
}
