//! A faithful Chime-compatible HTTP endpoint for `CreateUser` and `ListUsers` (docs/design.md §5).
//!
//! Three faces share this module: `chime-gateway --emulate` runs it in-process on a loopback port,
//! the `chime-emulator` binary serves it for other teams' tests, and this crate's tests drive it
//! through [`Emulator`]. A request flows:
//!
//! ```text
//! serve (TCP, HTTP/1.1 and h2c, connection resets)
//!   -> routes (record, faults before serving, SigV4, routing, throttling, faults after serving)
//!   -> create_user | list_users (model patterns, state)
//!   -> wire (restJson1 bodies and headers exactly as AWS shapes them)
//! ```
//!
//! All state is in memory behind short mutex sections, safe under concurrent calls.

mod admin;
mod create_user;
mod faults;
pub(crate) mod list_users;
pub(crate) mod routes;
mod serve;
pub mod sigv4;
pub(crate) mod state;
mod stats;
pub mod wire;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{net::TcpListener, task::JoinHandle};

pub use faults::{ChaosConfig, Fault, Operation, TypeLocation};
pub use state::{RecordedRequest, StoredUser};
pub use stats::{OperationStats, Stats};

/// The example account of the API reference; it exists unless the account list is replaced.
pub const DEMO_ACCOUNT_ID: &str = "12a3456b-7c89-012d-3456-78901e23fg45";
/// The access key id accepted by default (AWS's documented example key).
pub const DEFAULT_ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// The secret access key accepted by default (AWS's documented example key).
pub const DEFAULT_SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// The SigV4 region the emulator verifies.
pub const REGION: &str = "us-east-1";
/// The SigV4 service name the emulator verifies.
pub const SERVICE: &str = "chime";
/// How many received Chime requests are kept for [`Emulator::requests`]; older ones are dropped.
pub const RECORDED_LIMIT: usize = 1000;

/// What the emulator accepts and knows.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The one access key id whose signatures verify.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// The accounts that exist; a request for any other answers 404.
    pub accounts: Vec<String>,
    /// Calls per second allowed per account (burst of the same size); `None` never throttles.
    pub throttle_rps: Option<u32>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            access_key_id: DEFAULT_ACCESS_KEY_ID.to_owned(),
            secret_access_key: DEFAULT_SECRET_ACCESS_KEY.to_owned(),
            accounts: vec![DEMO_ACCOUNT_ID.to_owned()],
            throttle_rps: None,
        }
    }
}

/// What every connection of one emulator shares.
#[derive(Debug)]
pub(crate) struct Shared {
    config: EmulatorConfig,
    pub(crate) state: Mutex<state::State>,
    faults: Mutex<VecDeque<(Operation, Fault, u32)>>,
    chaos: Mutex<Option<faults::Chaos>>,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    pub(crate) stats: Mutex<Stats>,
    connections: AtomicU64,
}

/// A running emulator; dropping it stops accepting connections.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Emulator {
    /// Starts an emulator on an ephemeral loopback port.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::serve(listener, config)
    }

    /// Serves on an already-bound listener, in a background task.
    pub fn serve(listener: TcpListener, config: EmulatorConfig) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let accept = tokio::spawn(serve::accept_loop(listener, shared.clone()));
        Ok(Self { addr, shared, accept })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give an SDK as its endpoint (`AWS_ENDPOINT_URL_CHIME`).
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The key pair the emulator accepts.
    pub fn credentials(&self) -> (&str, &str) {
        let c = &self.shared.config;
        (&c.access_key_id, &c.secret_access_key)
    }

    /// Makes the next `times` CreateUser requests meet `fault` (queued after earlier faults).
    pub fn inject(&self, fault: Fault, times: u32) {
        self.shared.inject(Operation::CreateUser, fault, times);
    }

    /// Makes the next `times` requests of `operation` meet `fault` (queued after earlier faults).
    pub fn inject_for(&self, operation: Operation, fault: Fault, times: u32) {
        self.shared.inject(operation, fault, times);
    }

    /// What each operation received and answered so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// Starts (or, with `None`, stops) a seeded random mix of faults; queued faults go first.
    pub fn set_chaos(&self, chaos: Option<ChaosConfig>) {
        *self.shared.chaos.lock().unwrap() = chaos.map(faults::Chaos::new);
    }

    /// The Chime requests (CreateUser, ListUsers, and any other path but the admin API) received so
    /// far (the last [`RECORDED_LIMIT`]), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorded.lock().unwrap().iter().cloned().collect()
    }

    /// TCP connections accepted so far: shows whether a client reuses its connections.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Adds an account.
    pub fn add_account(&self, account_id: &str) {
        self.shared.state.lock().unwrap().add_account(account_id);
    }

    /// How many users an account holds (`None` for an unknown account).
    pub fn user_count(&self, account_id: &str) -> Option<usize> {
        self.shared.state.lock().unwrap().user_count(account_id)
    }

    /// The users of an account, in creation order (`None` for an unknown account).
    pub fn users(&self, account_id: &str) -> Option<Vec<StoredUser>> {
        self.shared.state.lock().unwrap().users(account_id)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Shared {
    /// Fresh state for `config`: its accounts, no users, no faults, nothing recorded.
    pub(crate) fn new(config: EmulatorConfig) -> Self {
        Self {
            state: Mutex::new(state::State::new(&config.accounts)),
            config,
            faults: Mutex::new(VecDeque::new()),
            chaos: Mutex::new(None),
            recorded: Mutex::new(VecDeque::new()),
            stats: Mutex::new(Stats::default()),
            connections: AtomicU64::new(0),
        }
    }

    fn inject(&self, operation: Operation, fault: Fault, times: u32) {
        if times > 0 {
            self.faults.lock().unwrap().push_back((operation, fault, times));
        }
    }

    /// The fault the next request of `operation` meets: the first one queued for it, else chaos.
    fn next_fault(&self, operation: Operation) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        if let Some(i) = faults.iter().position(|(op, ..)| *op == operation) {
            let (_, fault, remaining) = &mut faults[i];
            let fault = fault.clone();
            *remaining -= 1;
            if *remaining == 0 {
                faults.remove(i);
            }
            return Some(fault);
        }
        drop(faults);
        self.chaos.lock().unwrap().as_mut()?.roll(operation)
    }

    fn record(&self, request: RecordedRequest) {
        let mut recorded = self.recorded.lock().unwrap();
        if recorded.len() == RECORDED_LIMIT {
            recorded.pop_front();
        }
        recorded.push_back(request);
    }
}
