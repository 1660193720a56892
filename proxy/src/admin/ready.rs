//! `GET /ready`: whether this node serves what its config directory says,
//! for a Kubernetes readiness probe (and so for a DaemonSet rolling update,
//! which waits for each pod to be ready before it takes the next node).
//!
//! Ready means: the content on disk has been judged, and the version
//! serving is the one promoted from it (accepted and past its canary), or,
//! when that content was rejected, the version the node kept serving. With
//! `?require=accepted` (or `gate.require_accepted: true`) a rejected
//! content keeps the node not ready, so a rollout of bad content stalls on
//! the first node instead of being reported as done. The states, in the
//! order they are checked, are documented in `docs/FLEET.md`; [`State`]
//! names them.
//!
//! The gate supplies [`Facts`] (a read-only copy of its state); the logic
//! that turns them into a state is here, so it is tested without a gate.

use serde::Serialize;

/// What the gate knows, copied under its lock (`GateStatus::ready_facts`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    /// The snapshot id serving (the active version).
    pub serving: Option<String>,
    /// The newest version of the stable chain (finished its bake).
    pub stable: Option<String>,
    /// The version being rolled out, on the canary or baking.
    pub candidate: Option<String>,
    /// True while `candidate` is on the canary (not yet on every worker).
    pub canary: bool,
    /// The content the gate last read from the config directory; `None`
    /// before its first look.
    pub on_disk: Option<String>,
    /// The verdict code kept for `on_disk` (`accept`, `invalid`,
    /// `rolled_back:canary_5xx`, `held:blast_radius`, ...); `None` while it
    /// has none yet.
    pub on_disk_verdict: Option<String>,
    /// Whether that verdict accepted the content.
    pub on_disk_accepted: bool,
    /// A candidate in the sandbox now.
    pub judging: Option<String>,
    /// `could_not_judge:<code>` while judging fails.
    pub could_not_judge: Option<String>,
    /// Promotion is frozen by flapping.
    pub frozen: bool,
    /// `held:holdoff` or `held:halt` while the accepted content on disk
    /// waits for this node's hold-off or for the fleet-wide halt file to go
    /// (`gate::fleet`).
    pub fleet_held: Option<String>,
    /// `gate.require_accepted` of the serving version (in the JSON as
    /// `require_accepted_setting`: `require_accepted` says what applied).
    #[serde(rename = "require_accepted_setting")]
    pub require_accepted: bool,
}

/// One readiness state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The gate has not read the config directory since the process
    /// started.
    Starting,
    /// Judging failed for a reason not about the content (sandbox missing,
    /// state directory full): nothing is known about what is on disk.
    CouldNotJudge,
    /// The content on disk is in the sandbox, or read and not yet judged.
    Judging,
    /// The content on disk was accepted and runs on the canary worker.
    Canary,
    /// Accepted, held by the blast-radius guard until `POST /admin/confirm`,
    /// or waiting for this node's hold-off or the fleet-wide halt file.
    Held,
    /// Accepted, but promotion is frozen (flapping) until confirmed.
    Frozen,
    /// Accepted and about to be promoted (a short window).
    Promoting,
    /// Ready: the version serving is the one promoted from the content on
    /// disk (baking or stable).
    Serving,
    /// The content on disk was rejected or rolled back; the node serves the
    /// version it had. Ready unless acceptance is required.
    Rejected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::CouldNotJudge => "could_not_judge",
            State::Judging => "judging",
            State::Canary => "canary",
            State::Held => "held",
            State::Frozen => "frozen",
            State::Promoting => "promoting",
            State::Serving => "serving",
            State::Rejected => "rejected",
        }
    }
}

/// The answer of `GET /ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub state: State,
    /// Acceptance was required (by the query or the setting).
    pub require_accepted: bool,
    #[serde(flatten)]
    pub facts: Facts,
}

/// The state `facts` describe, and whether that is ready. `require`: the
/// query's `require=accepted` (`Some(true)`), `require=any` (`Some(false)`),
/// else the setting.
pub fn evaluate(facts: Facts, require: Option<bool>) -> Readiness {
    let require_accepted = require.unwrap_or(facts.require_accepted);
    let state = state_of(&facts);
    let ready = match state {
        State::Serving => true,
        State::Rejected => !require_accepted,
        _ => false,
    };
    Readiness {
        ready,
        state,
        require_accepted,
        facts,
    }
}

fn state_of(f: &Facts) -> State {
    if f.could_not_judge.is_some() {
        return State::CouldNotJudge;
    }
    if f.judging.is_some() {
        return State::Judging;
    }
    if f.canary {
        return State::Canary;
    }
    let Some(on_disk) = f.on_disk.as_deref() else {
        return State::Starting;
    };
    if f.serving.as_deref() == Some(on_disk) {
        // What the directory holds is what serves, wherever it came from
        // (promoted now, restored at start, or the stable version again).
        return State::Serving;
    }
    let Some(code) = f.on_disk_verdict.as_deref() else {
        return State::Judging;
    };
    if code.starts_with("held:") || (f.on_disk_accepted && f.fleet_held.is_some()) {
        return State::Held;
    }
    if !f.on_disk_accepted {
        return State::Rejected;
    }
    if f.frozen {
        State::Frozen
    } else {
        State::Promoting
    }
}

/// `require=` in a query string: `accepted` → `Some(true)`, `any` →
/// `Some(false)`, absent or anything else → `None` (the setting decides).
pub fn require_of(query: Option<&str>) -> Option<bool> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "require")
        .and_then(|(_, v)| match v {
            "accepted" => Some(true),
            "any" => Some(false),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(on_disk: &str, verdict: &str, accepted: bool) -> Facts {
        Facts {
            serving: Some("aaa".into()),
            stable: Some("aaa".into()),
            on_disk: Some(on_disk.into()),
            on_disk_verdict: Some(verdict.into()),
            on_disk_accepted: accepted,
            ..Facts::default()
        }
    }

    #[test]
    fn states_in_order() {
        let r = evaluate(steady("aaa", "accept", true), None);
        assert_eq!((r.state, r.ready), (State::Serving, true));
        let r = evaluate(steady("bbb", "invalid", false), None);
        assert_eq!((r.state, r.ready), (State::Rejected, true));
        let r = evaluate(steady("bbb", "invalid", false), Some(true));
        assert_eq!((r.state, r.ready), (State::Rejected, false));
        let mut f = steady("bbb", "rolled_back:canary_5xx", false);
        f.require_accepted = true;
        assert!(!evaluate(f.clone(), None).ready);
        assert!(evaluate(f, Some(false)).ready);
        let r = evaluate(steady("bbb", "held:blast_radius", false), None);
        assert_eq!((r.state, r.ready), (State::Held, false));
        let mut f = steady("bbb", "accept", true);
        f.fleet_held = Some("held:holdoff".into());
        assert_eq!(evaluate(f.clone(), None).state, State::Held);
        f.fleet_held = Some("held:halt".into());
        assert!(!evaluate(f, Some(false)).ready);
        let mut f = steady("aaa", "accept", true);
        f.fleet_held = Some("held:halt".into());
        assert_eq!(evaluate(f, None).state, State::Serving);
        let mut f = steady("bbb", "accept", true);
        assert_eq!(evaluate(f.clone(), None).state, State::Promoting);
        f.frozen = true;
        assert_eq!(evaluate(f.clone(), None).state, State::Frozen);
        f.canary = true;
        assert_eq!(evaluate(f.clone(), None).state, State::Canary);
        f.judging = Some("ccc".into());
        assert_eq!(evaluate(f.clone(), None).state, State::Judging);
        f.could_not_judge = Some("could_not_judge:sandbox".into());
        assert_eq!(evaluate(f, None).state, State::CouldNotJudge);
        let mut f = steady("bbb", "", false);
        f.on_disk_verdict = None;
        assert_eq!(evaluate(f.clone(), None).state, State::Judging);
        f.on_disk = None;
        let r = evaluate(f, None);
        assert_eq!((r.state, r.ready), (State::Starting, false));
    }

    #[test]
    fn require_query() {
        assert_eq!(require_of(Some("require=accepted")), Some(true));
        assert_eq!(require_of(Some("x=1&require=any")), Some(false));
        assert_eq!(require_of(Some("require=maybe")), None);
        assert_eq!(require_of(None), None);
    }
}
