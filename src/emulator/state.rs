//! The emulator's memory: accounts, the emails taken in each, per-account throttling, and the
//! requests received. Every operation is a short critical section under one mutex.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use serde::Serialize;

/// A CreateUser request as received, for tests to read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedRequest {
    /// The HTTP method.
    pub method: String,
    /// The path and query exactly as sent (still percent-encoded).
    pub uri: String,
    /// Header names (lowercase) and values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, as text (lossy for invalid UTF-8).
    pub body: String,
}

impl RecordedRequest {
    /// The first value of a header, by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Account {
    /// Lowercased emails of the users created.
    emails: HashSet<String>,
    users: usize,
    bucket: Option<Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Why a create was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such account.
    UnknownAccount,
    /// The email is taken in the account.
    DuplicateEmail,
}

/// All accounts.
#[derive(Debug)]
pub struct State {
    accounts: HashMap<String, Account>,
}

impl State {
    /// State with the given accounts, empty.
    pub fn new(accounts: &[String]) -> Self {
        let accounts = accounts.iter().map(|a| (a.clone(), Account::default())).collect();
        Self { accounts }
    }

    /// Adds an account (no-op if it exists).
    pub fn add_account(&mut self, account_id: &str) {
        self.accounts.entry(account_id.to_owned()).or_default();
    }

    /// Users created in an account.
    pub fn user_count(&self, account_id: &str) -> Option<usize> {
        self.accounts.get(account_id).map(|a| a.users)
    }

    /// Takes one token from the account's bucket; `Err(wait)` when it is empty.
    /// Unknown accounts are not throttled (they answer 404 later).
    pub fn admit(&mut self, account_id: &str, rps: u32, now: Instant) -> Result<(), Duration> {
        let Some(account) = self.accounts.get_mut(account_id) else {
            return Ok(());
        };
        let rate = f64::from(rps.max(1));
        let bucket = account.bucket.get_or_insert(Bucket {
            tokens: rate,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Records a new user, refusing unknown accounts and duplicate emails (case-insensitive).
    pub fn create(&mut self, account_id: &str, email: Option<&str>) -> Result<(), Refusal> {
        let account = self.accounts.get_mut(account_id).ok_or(Refusal::UnknownAccount)?;
        if let Some(email) = email
            && !account.emails.insert(email.to_lowercase())
        {
            return Err(Refusal::DuplicateEmail);
        }
        account.users += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State::new(&["a".to_owned()])
    }

    #[test]
    fn duplicate_email_is_refused_case_insensitively() {
        let mut s = state();
        assert_eq!(s.create("a", Some("Jane@Example.com")), Ok(()));
        assert_eq!(
            s.create("a", Some("jane@example.com")),
            Err(Refusal::DuplicateEmail)
        );
        assert_eq!(s.user_count("a"), Some(1));
    }

    #[test]
    fn users_without_email_never_conflict() {
        let mut s = state();
        assert_eq!(s.create("a", None), Ok(()));
        assert_eq!(s.create("a", None), Ok(()));
        assert_eq!(s.user_count("a"), Some(2));
    }

    #[test]
    fn unknown_account_is_refused() {
        assert_eq!(state().create("b", None), Err(Refusal::UnknownAccount));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refills() {
        let mut s = state();
        let t0 = Instant::now();
        assert!(s.admit("a", 2, t0).is_ok());
        assert!(s.admit("a", 2, t0).is_ok());
        let wait = s.admit("a", 2, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500));
        assert!(s.admit("a", 2, t0 + Duration::from_millis(500)).is_ok());
    }
}
