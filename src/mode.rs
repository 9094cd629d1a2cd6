//! What a subscription's delivery is doing — live, behind its backlog,
//! paused, or with its circuit open: the one vocabulary the daemon, its
//! metrics, `walhook.subscription_state` and `walhook status` share.
//!
//! It names the modes; `deliver` decides which one a subscription is in.

/// What a subscription is doing, as `status` and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Events go from the stream to the endpoint, in memory.
    Live,
    /// Events are appended to the backlog and drained from it in order.
    Backlog,
    /// An operator paused it: events wait in the backlog.
    Paused,
    /// The endpoint is failing: events wait in the backlog while one probe
    /// at a time tests it.
    CircuitOpen,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Live, Mode::Backlog, Mode::Paused, Mode::CircuitOpen];

    /// The name used in metrics labels and in `walhook.subscription_state`.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Backlog => "backlog",
            Mode::Paused => "paused",
            Mode::CircuitOpen => "circuit_open",
        }
    }
}

impl Mode {
    /// The mode of a label (as stored by a running daemon).
    pub fn from_label(label: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|mode| mode.label() == label)
    }

    /// How `status` prints it.
    pub fn describe(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Backlog => "backlog",
            Mode::Paused => "paused",
            Mode::CircuitOpen => "circuit open",
        }
    }
}
