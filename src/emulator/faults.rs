//! Scripted faults: what the next requests of an operation meet instead of, before or after
//! normal service; and chaos, a seeded random mix of faults on a share of requests.
//!
//! Two families. `error`, `latency`, `reset` and `malformed_body` act *before* anything is
//! stored: the request is not served (latency: served late). The `commit_then_*` faults act
//! *after*: the request is served as usual (a CreateUser stores its user if it can), then its
//! answer is lost, late or replaced, the way a caller meets an outcome it cannot know.
//!
//! Plain data, serializable so the standalone emulator can take them over its admin API.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// One scripted fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Before serving: answer with an error status, shaped like AWS's.
    Error {
        /// The HTTP status.
        status: u16,
        /// The AWS error type, e.g. `ThrottledClientException`.
        #[serde(default)]
        error_type: Option<String>,
        /// Where the error type is sent.
        #[serde(default)]
        type_in: TypeLocation,
        /// A `Retry-After` header, in seconds.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Before serving: wait this many milliseconds, then serve the request as usual.
    Latency {
        /// The delay in milliseconds.
        millis: u64,
    },
    /// Before serving: reset the TCP connection (RST) after the request has been read, without
    /// answering.
    Reset,
    /// Before serving: answer 201 with a body that is not a CreateUser response.
    MalformedBody,
    /// Serve the request (the user is stored), then reset the connection instead of answering.
    CommitThenReset,
    /// Serve the request (the user is stored), then answer this many milliseconds late.
    CommitThenDelay {
        /// The delay in milliseconds.
        millis: u64,
    },
    /// Serve the request (the user is stored), then answer with an error status instead.
    CommitThenError {
        /// The HTTP status.
        status: u16,
        /// The AWS error type, e.g. `ServiceFailureException`.
        #[serde(default)]
        error_type: Option<String>,
        /// Where the error type is sent.
        #[serde(default)]
        type_in: TypeLocation,
        /// A `Retry-After` header, in seconds.
        #[serde(default)]
        retry_after: Option<u64>,
    },
}

impl Fault {
    /// True for the faults that act after the request was served.
    pub fn after_commit(&self) -> bool {
        matches!(
            self,
            Fault::CommitThenReset | Fault::CommitThenDelay { .. } | Fault::CommitThenError { .. }
        )
    }
}

/// The operations the emulator serves, which faults may target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `POST /accounts/{accountId}/users?operation=create`.
    #[default]
    CreateUser,
    /// `GET /accounts/{accountId}/users`.
    ListUsers,
}

/// A seeded random mix of faults: each request of the targeted operations meets one of `faults`
/// (picked uniformly) with probability `share`, when no scripted fault is queued for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosConfig {
    /// The seed of the random choices, so a run can be repeated.
    pub seed: u64,
    /// The share of requests that meet a fault, from 0 to 1.
    pub share: f64,
    /// The faults to pick from.
    pub faults: Vec<Fault>,
    /// The operation whose requests meet them; unset: every operation.
    #[serde(default)]
    pub operation: Option<Operation>,
}

/// [`ChaosConfig`] with its random source.
#[derive(Debug)]
pub(crate) struct Chaos {
    config: ChaosConfig,
    rng: StdRng,
}

impl Chaos {
    pub(crate) fn new(config: ChaosConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self { config, rng }
    }

    /// The fault the next request of `operation` meets, if any.
    pub(crate) fn roll(&mut self, operation: Operation) -> Option<Fault> {
        if self.config.operation.is_some_and(|o| o != operation) || self.config.faults.is_empty() {
            return None;
        }
        if !self.rng.random_bool(self.config.share.clamp(0.0, 1.0)) {
            return None;
        }
        let i = self.rng.random_range(0..self.config.faults.len());
        Some(self.config.faults[i].clone())
    }
}

/// Where a scripted error's type travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeLocation {
    /// `x-amzn-ErrorType`, as AWS sends it.
    #[default]
    Header,
    /// The body's `__type` only.
    Body,
    /// Nowhere: only the status tells.
    Nowhere,
}

impl Fault {
    /// An AWS-shaped error with its type in the header.
    pub fn error(status: u16, error_type: &str) -> Self {
        Fault::Error {
            status,
            error_type: Some(error_type.to_owned()),
            type_in: TypeLocation::Header,
            retry_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_read_from_the_admin_api_shape() {
        let f: Fault = serde_json::from_str(r#"{"kind": "commit_then_error", "status": 500}"#).unwrap();
        assert_eq!(
            f,
            Fault::CommitThenError {
                status: 500,
                error_type: None,
                type_in: TypeLocation::Header,
                retry_after: None
            }
        );
        let f: Fault = serde_json::from_str(r#"{"kind": "commit_then_delay", "millis": 20}"#).unwrap();
        assert!(f.after_commit());
        let f: Fault = serde_json::from_str(r#"{"kind": "commit_then_reset"}"#).unwrap();
        assert!(f.after_commit());
        assert!(!Fault::Reset.after_commit());
    }

    #[test]
    fn chaos_is_repeatable_from_its_seed_and_hits_about_its_share() {
        let config = ChaosConfig {
            seed: 7,
            share: 0.5,
            faults: vec![Fault::Reset, Fault::CommitThenReset],
            operation: Some(Operation::CreateUser),
        };
        let run = |config: &ChaosConfig| {
            let mut chaos = Chaos::new(config.clone());
            (0..1000)
                .map(|_| chaos.roll(Operation::CreateUser))
                .collect::<Vec<_>>()
        };
        let first = run(&config);
        assert_eq!(first, run(&config));
        let hits = first.iter().filter(|f| f.is_some()).count();
        assert!((400..600).contains(&hits), "{hits}");
        assert!(first.contains(&Some(Fault::Reset)) && first.contains(&Some(Fault::CommitThenReset)));
        let mut chaos = Chaos::new(config);
        assert!((0..100).all(|_| chaos.roll(Operation::ListUsers).is_none()));
    }
}
