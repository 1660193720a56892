//! Local-gate fleets: the per-node promotion hold-off and the fleet-wide
//! halt file.
//!
//! Many nodes fed from one mutable ConfigMap all see a change within the
//! kubelet's sync window. Each node's gate judges it alone, so a change no
//! gate can see as bad would be promoted on every node together. Two
//! things spread and stop that (docs/FLEET.md, "Local-gate mode"):
//!
//! - **The hold-off** (`gate.holdoff`): an accepted candidate waits
//!   `fnv1a64(node) mod window` before it is promoted. The delay is a stable
//!   function of the node's name, so each node always takes its own place
//!   in the window and an operator can tell which nodes went first.
//! - **The halt file** ([`HALT_FILE`] in the config directory, a `halt`
//!   key of the ConfigMap): while it exists, nothing is promoted; candidates
//!   are judged and held (`held:halt`). Its name is not a config file name
//!   (`*.yaml`), so it is not part of a snapshot: adding or removing it is
//!   no config change, and it never reaches a verdict or the state
//!   directory. When it goes, each node waits its hold-off delay again from
//!   that moment, so a released fleet does not promote together either.
//!
//! This module keeps the pure parts (names, the hash, the hold itself);
//! the gate's promotion path (`Gate::fleet_step`) uses them.

use std::path::Path;
use std::time::{Duration, Instant};

use aegis_engine::config::Settings;

use super::store::Record;

/// The halt file's name in the config directory (the ConfigMap key).
pub const HALT_FILE: &str = "aegis-halt";
/// The environment variable naming the node (the downward API's
/// `spec.nodeName` in the manifests).
pub const NODE_ENV: &str = "AEGIS_NODE_NAME";
/// Verdict code of a candidate waiting out its hold-off.
pub const HELD_HOLDOFF: &str = "held:holdoff";
/// Verdict code of a candidate held by the halt file.
pub const HELD_HALT: &str = "held:halt";
/// How often a held candidate is looked at again (the halt file may go
/// away while the watcher polls, and polling sees content only).
pub const HOLD_POLL: Duration = Duration::from_secs(1);

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is
/// not), and simple enough to compute by hand in a script or a test.
pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The hold-off of `node` in `window`: `fnv1a64(node) mod window` in whole
/// milliseconds. Zero when the window is.
pub fn delay(node: &str, window: Duration) -> Duration {
    let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fnv1a64(node).checked_rem(w).unwrap_or(0))
}

/// The node's name: the setting, else `$AEGIS_NODE_NAME`, else the host
/// name. `None` when none is known (then there is no hold-off to spread).
pub fn node_name(setting: Option<&str>) -> Option<String> {
    let set = |s: &str| {
        let t = s.trim();
        (!t.is_empty()).then(|| t.to_string())
    };
    setting
        .and_then(set)
        .or_else(|| std::env::var(NODE_ENV).ok().as_deref().and_then(set))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .as_deref()
                .and_then(set)
        })
}

/// This node's hold-off under `settings` (the active version's: a
/// candidate does not choose its own hold-off), with the node's name.
pub fn holdoff_of(settings: &Settings) -> (Option<String>, Duration) {
    let h = &settings.gate.holdoff;
    if h.window.0.is_zero() {
        return (None, Duration::ZERO);
    }
    let node = node_name(h.node.as_deref());
    let d = node
        .as_deref()
        .map_or(Duration::ZERO, |n| delay(n, h.window.0));
    (node, d)
}

/// Whether the halt file is in `dir` (any kind of entry, any content: a
/// ConfigMap key is a symlink into `..data`).
pub fn halted(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(HALT_FILE)).is_ok()
}

/// An accepted candidate waiting for its hold-off or for the halt file to
/// go.
#[derive(Debug, Clone)]
pub struct FleetHold {
    /// The accepted verdict (kept as it is in the store).
    pub record: Record,
    /// Promote it as a revert (its verdict was reused).
    pub reverted: bool,
    /// [`HELD_HOLDOFF`] or [`HELD_HALT`].
    pub reason: &'static str,
    /// When the hold began (wall clock, ms).
    pub since_ms: u64,
    /// When the hold-off ends (meaningless while halted).
    pub release_at: Instant,
    /// The same, wall clock (ms).
    pub release_ms: u64,
    /// This node's delay.
    pub delay: Duration,
}

impl FleetHold {
    /// `GET /admin/config`'s `fleet_hold`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.record.id,
            "reason": self.reason,
            "since_ms": self.since_ms,
            "release_ms": (self.reason == HELD_HOLDOFF).then_some(self.release_ms),
            "delay_ms": u64::try_from(self.delay.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// `GET /admin/config`'s `holdoff`: this node's place in the window.
pub fn holdoff_json(settings: Option<&Settings>, dir: &Path) -> serde_json::Value {
    let (node, d) = settings.map_or((None, Duration::ZERO), holdoff_of);
    let window = settings.map_or(Duration::ZERO, |s| s.gate.holdoff.window.0);
    serde_json::json!({
        "node": node,
        "window_ms": u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        "delay_ms": u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        "halt_file": HALT_FILE,
        "halted": halted(dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_the_published_function() {
        // Test vectors of FNV-1a 64 (draft-eastlake-fnv).
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn delay_is_inside_the_window_and_stable() {
        let w = Duration::from_secs(300);
        let names = ["node-a", "node-b", "node-c", "ip-10-0-0-1"];
        let ds: Vec<Duration> = names.iter().map(|n| delay(n, w)).collect();
        assert!(ds.iter().all(|d| *d < w));
        assert_eq!(ds, names.iter().map(|n| delay(n, w)).collect::<Vec<_>>());
        assert!(ds.windows(2).any(|p| p[0] != p[1]), "{ds:?}");
        assert_eq!(delay("node-a", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn node_name_prefers_the_setting() {
        assert_eq!(node_name(Some(" n1 ")).as_deref(), Some("n1"));
    }
}
