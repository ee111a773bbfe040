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
//! 7% of random 429s, never trigger it. A long window learns slowly that a throttle began (a
//! quiet process's accepts of the last minutes outweigh its first 429s), so the onset of a
//! throttle, most of a process's last sends answered 429 ([`ONSET`]), or a third of them while
//! its window refuses nothing ([`ONSET_AT_EASE`]), cuts the window back to the requests that
//! met it; its end, a run of accepted sends no throttle would make
//! ([`END_ODDS`]), cuts it back to that run, refusals gone. And a process that bad luck left far
//! below its share is held at no less than half of it ([`FLOOR`]).
//!
//! The draws are deterministic (error diffusion: a fraction of a request carried from one draw
//! to the next), so a process refuses exactly its share and tests repeat. A window whose process
//! fell silent for twice the time its own requests span is forgotten: a throttle older than the
//! traffic that met it says nothing of now, and a burst after it goes out unhindered.

use std::{collections::VecDeque, str::FromStr, sync::Mutex, time::Duration};

use rand::Rng;
use tokio::time::Instant;

/// How many of its last requests a process judges by, for each operation. The longer the window,
/// the less a throttled process's share follows the chance of its own recent answers: with 400,
/// the least of 1,000 quiet senders keeps 0.49 to 0.56 of an even share over three draws of the
/// fleet simulation, against 0.40 to 0.49 with 200. With 800 they keep 0.59 to 0.62 once
/// settled, but a turn lasts twice as long, and 50 new senders ten minutes into a throttle keep
/// 0.42 to 0.55 of an even share, against 0.54 to 0.69 with 400.
pub const WINDOW: usize = 400;
/// Sends allowed per accept: 10% above what Chime accepts, so that random 429s of up to 11.8%
/// never refuse (`1 - (1 - PROBE) / K`), while a fleet throttled at R sends about 1.1 R + PROBE.
pub const K: f64 = 1.1;
/// The share of requests sent whatever the window says: probes whose answers tell a process
/// when the throttle ends, and the pull that holds each process's sends at its own share (by
/// `PROBE x offered / sent` a window, an eighth at 5R offered). A larger `PROBE` with a smaller
/// `K` pulls little harder for the same sum, and narrows the headroom random 429s need.
pub const PROBE: f64 = 0.03;
/// A 429 is not retried while the throttle refuses at least this share of creates: the account
/// is over its limit, and a retry could only add to what it refuses.
pub const NO_RETRY_REFUSING: f64 = 0.25;
/// The accepts a new window assumes, in its oldest places: a new process (or one whose window
/// was forgotten) is not thrown by its first 429s, and each request not accepted takes one away.
pub const PRIOR: usize = 20;
/// The least a throttled process sends, as a share of what its own answers say it settles at:
/// `PROBE / (1 - K x accepted)`, where `accepted` is the share of its window's sends that Chime
/// accepted (the same for every process of a fleet, give or take chance). A process whose
/// window fell far below its share after bad luck, and would climb back only at `PROBE`'s slow
/// pull, sends at least half of it at once.
pub const FLOOR: f64 = 0.5;
/// A throttle's onset: when [`ONSET`]`.0` of a process's last [`ONSET`]`.1` requests sent were
/// answered 429, its window keeps only what came from the first of them on. Random 429s of 7%
/// do that about once in 10^13 sends, a settled throttle (one send in five answered 429) once in
/// five million; a throttle that begins, at once.
pub const ONSET: (usize, usize) = (15, 20);
/// A throttle's onset for a process at ease (its window has refused nothing): when
/// [`ONSET_AT_EASE`]`.0` of its last [`ONSET_AT_EASE`]`.1` sends were answered 429, its window
/// keeps what came from the first of its last [`ONSET`]`.1` sends on. A process that served a
/// healthy account meets few of a throttle's first seconds if it is quiet; once the rest of its
/// fleet has come down, one send in two to five meets 429, [`ONSET`] never fires, and minutes of
/// accepts kept it sending nearly everything until its window turned over: 50 such senders sent
/// 1.55R to 1.71R in the throttle's first minute, 1.41R to 1.44R with this. Random 429s of 7% do
/// it about once in 4 x 10^6 sends, and a settled throttle never (its windows refuse).
pub const ONSET_AT_EASE: (usize, usize) = (14, 40);
/// A throttle's end: a run of accepted sends that the throttle would make less often than once
/// in this many. The window then keeps only the run: its refusals refused what Chime now serves,
/// and without this a process climbs back at `K`'s pace (a tenth more sends a window turn: 1,300
/// requests, eleven minutes of a quiet sidecar's calls). A throttle accepts at most `1 / K` of
/// a fleet's sends once settled, and less while it begins, so the run is judged at that share or
/// at the window's own share of accepted sends before it, whichever is higher: 97 sends. The
/// window's own share alone is stale while a fleet comes down to its limit (a quarter accepted
/// at the onset, four fifths a minute later), and it took runs of 15 for an end: 50 new senders
/// then sent 1.36R to 1.41R in the throttle's first minute, not 1.24R to 1.32R.
pub const END_ODDS: f64 = 1e4;
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

/// What became of one request in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Sent, and not answered 429.
    Accepted,
    /// Sent, and answered 429.
    Throttled,
    /// Refused by the throttle.
    Refused,
}

/// The throttle's constants, together: [`Tuning::DEFAULT`] in the gateway.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// [`WINDOW`].
    pub window: usize,
    /// [`K`].
    pub k: f64,
    /// [`PROBE`].
    pub probe: f64,
    /// [`PRIOR`].
    pub prior: usize,
    /// [`FLOOR`].
    pub floor: f64,
}

impl Tuning {
    /// The gateway's constants.
    pub const DEFAULT: Tuning = Tuning {
        window: WINDOW,
        k: K,
        probe: PROBE,
        prior: PRIOR,
        floor: FLOOR,
    };
}

/// One operation's window.
#[derive(Debug)]
struct Window {
    tuning: Tuning,
    /// When each request was answered or refused, and what became of it.
    requests: VecDeque<(Instant, Answer)>,
    accepts: usize,
    /// The requests in the window that were sent and answered 429.
    throttled: usize,
    /// Requests pushed into the window so far.
    pushed: u64,
    /// The last [`ONSET_AT_EASE`]`.1` requests sent since the last onset: which push each was,
    /// and whether it met a 429.
    sent: VecDeque<(u64, bool)>,
    /// Of those, the ones answered 429: among the last [`ONSET`]`.1`, and among them all.
    sent_throttled: (usize, usize),
    /// The accepted sends since the last 429, all of them the window's newest sends.
    run: usize,
    /// Which push the first of them was.
    run_from: u64,
    /// Accepts assumed in the window's oldest places: each request not accepted (a 429, or a
    /// refusal) takes one away, so they hold while Chime accepts and go as soon as it throttles.
    prior: usize,
    /// The fraction of a send carried to the next draw.
    carry: f64,
}

impl Window {
    fn new(tuning: Tuning) -> Self {
        Self {
            tuning,
            requests: VecDeque::with_capacity(tuning.window),
            accepts: 0,
            throttled: 0,
            pushed: 0,
            sent: VecDeque::with_capacity(ONSET_AT_EASE.1),
            sent_throttled: (0, 0),
            run: 0,
            run_from: 0,
            prior: tuning.prior,
            carry: 0.5,
        }
    }

    fn push(&mut self, at: Instant, answer: Answer) {
        let window = self.tuning.window;
        if answer != Answer::Accepted || self.requests.len() + self.prior == window {
            self.prior = self.prior.saturating_sub(1);
        }
        if self.requests.len() + self.prior == window
            && let Some((_, old)) = self.requests.pop_front()
        {
            self.drop_answer(old);
        }
        self.requests.push_back((at, answer));
        self.accepts += usize::from(answer == Answer::Accepted);
        self.throttled += usize::from(answer == Answer::Throttled);
        self.pushed += 1;
    }

    fn drop_answer(&mut self, answer: Answer) {
        self.accepts -= usize::from(answer == Answer::Accepted);
        self.throttled -= usize::from(answer == Answer::Throttled);
    }

    /// A request sent was answered: `throttled` when with a 429.
    fn answered(&mut self, at: Instant, throttled: bool) {
        self.push(
            at,
            if throttled {
                Answer::Throttled
            } else {
                Answer::Accepted
            },
        );
        if self.sent.len() == ONSET_AT_EASE.1
            && let Some((_, old)) = self.sent.pop_front()
        {
            self.sent_throttled.1 -= usize::from(old);
        }
        self.sent.push_back((self.pushed - 1, throttled));
        self.sent_throttled.0 += usize::from(throttled);
        self.sent_throttled.1 += usize::from(throttled);
        if let Some(&(_, left)) = self
            .sent
            .len()
            .checked_sub(ONSET.1 + 1)
            .and_then(|i| self.sent.get(i))
        {
            self.sent_throttled.0 -= usize::from(left);
        }
        let at_ease = self.requests.len() == self.accepts + self.throttled;
        if self.sent_throttled.0 >= ONSET.0 || at_ease && self.sent_throttled.1 >= ONSET_AT_EASE.0 {
            self.onset();
        }
        if throttled {
            self.run = 0;
        } else {
            if self.run == 0 {
                self.run_from = self.pushed - 1;
            }
            self.run += 1;
            if self.ended() {
                self.end();
            }
        }
    }

    /// Whether the run of accepted sends says the throttle is over: the window refuses, and
    /// `q^run < 1 / END_ODDS`, where `q` is the share of its sends before the run that were
    /// accepted, or `1 / K` if higher. A window that holds no 429 at all (the last left it) has
    /// nothing left that says Chime throttles.
    fn ended(&self) -> bool {
        if self.requests.len() == self.accepts + self.throttled {
            return false;
        }
        if self.throttled == 0 {
            return true;
        }
        let before = (self.accepts + self.throttled).saturating_sub(self.run);
        let accepted_before = self.accepts.saturating_sub(self.run);
        let q = (accepted_before as f64 / before.max(1) as f64).max(1.0 / self.tuning.k);
        q.powi(i32::try_from(self.run).unwrap_or(i32::MAX)) * END_ODDS < 1.0
    }

    /// A throttle ended: the window keeps only the run's sends. (Its refusals gone, the window
    /// holds fewer requests than were pushed since the run began, so a later cut by pushes keeps
    /// at most that many more of its oldest requests.)
    fn end(&mut self) {
        let keep = usize::try_from(self.pushed - self.run_from).unwrap_or(usize::MAX);
        let drop = self.requests.len().saturating_sub(keep);
        self.requests.drain(..drop);
        self.requests.retain(|&(_, answer)| answer == Answer::Accepted);
        self.accepts = self.requests.len();
        self.throttled = 0;
    }

    /// A throttle began: the window keeps what came from the first of the last [`ONSET`]`.1`
    /// sends on, so the accepts before them (a quiet process's may go back minutes) no longer
    /// outweigh it.
    fn onset(&mut self) {
        let Some(&(first, _)) = self.sent.get(self.sent.len().saturating_sub(ONSET.1)) else {
            return;
        };
        let keep = usize::try_from(self.pushed - first).unwrap_or(usize::MAX);
        while self.requests.len() > keep {
            let (_, old) = self.requests.pop_front().expect("longer than kept");
            self.drop_answer(old);
        }
        self.prior = 0;
        self.sent.clear();
        self.sent_throttled = (0, 0);
    }

    fn forget_if_stale(&mut self, now: Instant) {
        let (Some(&(oldest, _)), Some(&(newest, _))) = (self.requests.front(), self.requests.back()) else {
            return;
        };
        let span = newest.duration_since(oldest);
        if self.requests.len() >= STALE_AFTER && now.duration_since(newest) > span * 2 {
            *self = Self::new(self.tuning);
        }
    }

    fn refusal_probability(&self) -> f64 {
        let requests = (self.requests.len() + self.prior) as f64;
        let accepts = (self.accepts + self.prior) as f64;
        let Tuning { k, probe, floor, .. } = self.tuning;
        let p = (((1.0 - probe) * requests - k * accepts) / (requests + 1.0)).max(0.0);
        let sent = self.accepts + self.throttled;
        if floor == 0.0 || sent == 0 {
            return p;
        }
        // FLOOR's share of where the process settles, by its own sends' answers.
        let accepted = self.accepts as f64 / sent as f64;
        let settles_at = if k * accepted >= 1.0 - probe {
            1.0
        } else {
            (probe / (1.0 - k * accepted)).min(1.0)
        };
        p.min(1.0 - floor * settles_at)
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
        self.push(now, Answer::Refused);
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
        Self::tuned(mode, Tuning::DEFAULT)
    }

    /// A throttle in `mode` with other constants than the gateway's (the fleet simulation's
    /// comparisons).
    pub fn tuned(mode: SendRate, tuning: Tuning) -> Self {
        Self {
            mode,
            windows: [Mutex::new(Window::new(tuning)), Mutex::new(Window::new(tuning))],
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
        self.window(op).answered(Instant::now(), throttled);
    }

    /// The probability that a request of `op` is refused now (`None`: the throttle is off).
    pub fn refusal_probability(&self, op: Operation) -> Option<f64> {
        (self.mode == SendRate::Adaptive).then(|| self.window(op).refusal_probability())
    }
}
