//! The adaptive throttle: client-side adaptive throttling as the Google SRE book describes it
//! (docs/design.md §8), kept apart for each operation, since Chime throttles CreateUser and
//! ListUsers apart.
//!
//! For each operation, a window of the process's last [`WINDOW`] requests: those answered
//! (accepted, or throttled with a 429) and those it refused itself. A new request is refused with
//! probability `max(0, ((1 - PROBE) * requests - K * accepts) / (requests + 1))` over the window.
//! So a process sends about `K` times what Chime accepts of its requests, plus a `PROBE` share of
//! its requests: both in proportion to its own traffic, so a fleet's sum follows the fleet's
//! traffic whatever its size (throttled at R, a fleet offered 5R sends about 1.1R + 0.03 x 5R).
//! A new window assumes [`PRIOR`] accepts in its oldest places, each taken away by a request not
//! accepted: a new process is not thrown by its first random 429s, yet learns a throttle fast.
//! `PROBE` is also what holds each process at its own share: without it a process's sends and
//! accepts feed each other, and shares drift. Answers that are not 429 are accepts: a 503, or
//! 7% of random 429s, never trigger it.
//!
//! The draws are deterministic (error diffusion: a fraction of a request carried from one draw
//! to the next), so a process refuses exactly its share and tests repeat. A window whose process
//! fell silent for twice the time its own requests span is forgotten: a throttle older than the
//! traffic that met it says nothing of now, and a burst after it goes out unhindered.

use std::{collections::VecDeque, str::FromStr, sync::Mutex, time::Duration};

use rand::Rng;
use tokio::time::Instant;

/// How many of its last requests a process judges by, for each operation.
pub const WINDOW: usize = 200;
/// Sends allowed per accept: 10% above what Chime accepts, so that random 429s of up to about
/// 10% never refuse (with [`PROBE`]), while a fleet throttled at R sends about 1.1 R + PROBE.
pub const K: f64 = 1.1;
/// The share of requests sent whatever the window says: probes whose answers tell a process
/// when the throttle ends, and the pull that holds each process's sends at its own share.
pub const PROBE: f64 = 0.03;
/// A 429 is not retried while the throttle refuses at least this share of creates: the account
/// is over its limit, and a retry could only add to what it refuses.
pub const NO_RETRY_REFUSING: f64 = 0.25;
/// The accepts a new window assumes, in its oldest places: a new process (or one whose window
/// was forgotten) is not thrown by its first 429s, and each request not accepted takes one away.
pub const PRIOR: usize = 20;
/// A window forgotten after silence holds at least this many requests (fewer span too little
/// time to judge by).
const STALE_AFTER: usize = 4;
/// The least time a refused call is told to wait before it comes back.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The operations Chime throttles apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// CreateUser.
    CreateUser,
    /// ListUsers (the lookups after unknown outcomes).
    ListUsers,
}

impl Operation {
    /// Every operation, in the order of their windows.
    pub const ALL: [Operation; 2] = [Operation::CreateUser, Operation::ListUsers];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CreateUser => "create_user",
            Operation::ListUsers => "list_users",
        }
    }

    fn index(self) -> usize {
        match self {
            Operation::CreateUser => 0,
            Operation::ListUsers => 1,
        }
    }
}

/// `--adaptive-throttle`: whether the process throttles itself after Chime's 429s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRate {
    /// Refuse a share of requests while Chime throttles (the default).
    Adaptive,
    /// Send every request.
    Off,
}

impl FromStr for SendRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" | "adaptive" => Ok(SendRate::Adaptive),
            "off" => Ok(SendRate::Off),
            _ => Err(format!("{s:?} is neither `on` nor `off`")),
        }
    }
}

/// A request the throttle refused: when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSlot {
    /// The caller's wait before trying again.
    pub retry_after: Duration,
}

/// One operation's window.
#[derive(Debug)]
struct Window {
    /// When each request was answered or refused, and whether Chime accepted it.
    requests: VecDeque<(Instant, bool)>,
    accepts: usize,
    /// Accepts assumed in the window's oldest places: each request not accepted (a 429, or a
    /// refusal) takes one away, so they hold while Chime accepts and go as soon as it throttles.
    prior: usize,
    /// The fraction of a send carried to the next draw.
    carry: f64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            requests: VecDeque::with_capacity(WINDOW),
            accepts: 0,
            prior: PRIOR,
            carry: 0.5,
        }
    }
}

impl Window {
    fn push(&mut self, at: Instant, accepted: bool) {
        if !accepted || self.requests.len() + self.prior == WINDOW {
            self.prior = self.prior.saturating_sub(1);
        }
        if self.requests.len() + self.prior == WINDOW
            && let Some((_, old)) = self.requests.pop_front()
        {
            self.accepts -= usize::from(old);
        }
        self.requests.push_back((at, accepted));
        self.accepts += usize::from(accepted);
    }

    fn forget_if_stale(&mut self, now: Instant) {
        let (Some(&(oldest, _)), Some(&(newest, _))) = (self.requests.front(), self.requests.back()) else {
            return;
        };
        let span = newest.duration_since(oldest);
        if self.requests.len() >= STALE_AFTER && now.duration_since(newest) > span * 2 {
            *self = Self::default();
        }
    }

    fn refusal_probability(&self) -> f64 {
        let requests = (self.requests.len() + self.prior) as f64;
        let accepts = (self.accepts + self.prior) as f64;
        (((1.0 - PROBE) * requests - K * accepts) / (requests + 1.0)).max(0.0)
    }

    /// Draws for one request: `Err` when it is refused.
    fn draw(&mut self, now: Instant) -> Result<(), ()> {
        self.forget_if_stale(now);
        let p = self.refusal_probability();
        self.carry += 1.0 - p;
        if self.carry >= 1.0 {
            self.carry -= 1.0;
            return Ok(());
        }
        self.push(now, false);
        Err(())
    }
}

/// The adaptive throttle of one gateway process, a window for each operation.
#[derive(Debug)]
pub struct SendLimiter {
    mode: SendRate,
    windows: [Mutex<Window>; 2],
}

impl SendLimiter {
    /// A throttle in `mode`.
    pub fn new(mode: SendRate) -> Self {
        Self {
            mode,
            windows: Default::default(),
        }
    }

    fn window(&self, op: Operation) -> std::sync::MutexGuard<'_, Window> {
        self.windows[op.index()].lock().expect("never poisoned")
    }

    /// Whether a request of `op` may go now; a refusal counts as a request not accepted.
    pub fn acquire(&self, op: Operation) -> Result<(), NoSlot> {
        if self.mode == SendRate::Off {
            return Ok(());
        }
        // Spread, so that calls refused together do not come back together.
        self.window(op).draw(Instant::now()).map_err(|()| NoSlot {
            retry_after: RETRY_AFTER.mul_f64(1.0 + rand::rng().random::<f64>()),
        })
    }

    /// Learns from Chime's answer to a request of `op`: `throttled` when it was a 429.
    pub fn record(&self, op: Operation, throttled: bool) {
        if self.mode == SendRate::Off {
            return;
        }
        self.window(op).push(Instant::now(), !throttled);
    }

    /// The probability that a request of `op` is refused now (`None`: the throttle is off).
    pub fn refusal_probability(&self, op: Operation) -> Option<f64> {
        (self.mode == SendRate::Adaptive).then(|| self.window(op).refusal_probability())
    }
}
