//! Request ids (AIP-155): what the gateway remembers of each `(account_id, request_id)`, so that a
//! caller's retries end with one user and one answer (SPEC section 7).
//!
//! Two bounded, expiring maps (moka), both keyed by a digest of the account and the id:
//! - *answers*: the final outcome of the first call, with a fingerprint of its request. A repeat
//!   with the same fingerprint gets it again; one with another fingerprint is a reused id. Calls
//!   with the same key while the first is in flight wait for it (moka's single flight), and get
//!   its answer even when it is not one to keep.
//! - *in doubt*: a marker left by a call that ended without knowing whether it created the user:
//!   its attempt timed out or lost its connection, or the call itself was cancelled (dropped) while
//!   an attempt was in flight. The next repeat then knows that a conflict may be its own earlier
//!   create; a call that ends knowing the outcome clears it. Calls that end as expected write
//!   nothing here, so the common path costs one map write (the kept answer).
//!
//! With `--state-dir`, the in-doubt markers are also written to a journal (`journal`) before each
//! call's first attempt leaves, so that a restarted process still knows them.
//!
//! Owns keys, fingerprints, what is kept and for how long; knows nothing of HTTP, gRPC statuses
//! or the upstream. Never sees an email in clear beyond hashing it.

use std::{
    future::Future,
    hash::{BuildHasher, Hasher},
    sync::Arc,
    time::Duration,
};

use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::pb::chime::v1::CreateUserRequest;

pub mod journal;

pub use journal::{Journal, Recovered};

/// An answer's size is charged to the capacity in units of this many bytes.
pub const WEIGHT_UNIT: usize = 1024;

/// Which call a request id belongs to: a digest of the account and the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a uniform digest: its first eight bytes are as good a hash as any.
        let (head, _) = self.0.split_first_chunk::<8>().expect("32 bytes");
        state.write_u64(u64::from_le_bytes(*head));
    }
}

/// Hashes a [`Key`] by taking the digest bytes it writes, instead of SipHash over them again.
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

impl BuildHasher for DigestHasher {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

type Marks = moka::sync::Cache<Key, Fingerprint, DigestHasher>;

impl Key {
    /// The key of `request_id` in `account_id`.
    pub fn new(account_id: &str, request_id: uuid::Uuid) -> Self {
        let mut h = Sha256::new();
        field(&mut h, Some(account_id.as_bytes()));
        h.update(request_id.as_bytes());
        Self(h.finalize().into())
    }
}

/// What a request asks for (account, email, username, user type), so a reused id is noticed
/// without keeping the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request; the request id itself is not part of it.
    pub fn of(request: &CreateUserRequest) -> Self {
        let mut h = Sha256::new();
        field(&mut h, Some(request.account_id.as_bytes()));
        field(&mut h, request.email.as_deref().map(str::as_bytes));
        field(&mut h, request.username.as_deref().map(str::as_bytes));
        h.update(request.user_type.to_be_bytes());
        Self(h.finalize().into())
    }
}

/// Hashes a field with its presence and length, so no two requests share an input.
fn field(h: &mut Sha256, value: Option<&[u8]>) {
    match value {
        None => h.update([0]),
        Some(v) => {
            h.update([1]);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
    }
}

/// The bytes an answer holds, to charge it to the capacity.
pub trait Footprint {
    /// Approximately how many bytes of memory the value holds, beyond the map's own entry.
    fn footprint(&self) -> usize;
}

/// How a call with a request id ended, as its repeats need to know it.
#[derive(Debug)]
pub enum Ending<V, E> {
    /// An answer no retry can change: kept, and every repeat gets it.
    Final(V),
    /// An answer not to keep (a retry may change it); `in_doubt` when an attempt may have
    /// created the user.
    Passing {
        /// The answer of this call (and of those that waited for it).
        error: E,
        /// An attempt's outcome is unknown.
        in_doubt: bool,
    },
}

/// What a call with a request id came to.
#[derive(Debug)]
pub enum Outcome<V, E> {
    /// An answer: this call's own (`replayed` false), or the first call's, kept or waited for.
    Answer {
        /// The answer.
        result: Result<V, Arc<E>>,
        /// This call did not make it: it is the answer of an earlier or concurrent call.
        replayed: bool,
    },
    /// The request id was used for a different request: nothing was done.
    Reused,
}

/// The calls of this request id before this one, as this call needs to know them, and the
/// marker this call leaves if it is dropped while an attempt is in flight.
#[derive(Debug)]
pub struct Doubt {
    mark: Option<(Marks, Key, Fingerprint)>,
    journal: Option<Arc<Journal>>,
    in_flight: bool,
    opened: bool,
    /// An earlier call with this request id ended without knowing whether it created the user,
    /// or the caller says this call is a retry.
    pub before: bool,
}

impl Doubt {
    /// For a call without a request id: nothing before it, nothing to mark.
    pub fn none() -> Self {
        Self {
            mark: None,
            journal: None,
            in_flight: false,
            opened: false,
            before: false,
        }
    }

    /// Whether the call has a request id, so that a retry of it can settle what this call leaves
    /// in doubt.
    pub fn has_request_id(&self) -> bool {
        self.mark.is_some()
    }

    /// Notes that an attempt is about to be sent: if the call goes away before
    /// [`Doubt::answered`], its request id is left in doubt.
    pub fn sent(&mut self) {
        self.in_flight = true;
        if self.opened {
            return;
        }
        self.opened = true;
        if let (Some(journal), Some((_, key, fingerprint))) = (&self.journal, &self.mark)
            && let Err(e) = journal.opened(*key, *fingerprint)
        {
            tracing::warn!(error = %e, "cannot record a request id in flight in --state-dir");
        }
    }

    /// Notes that the attempt in flight came back (whatever it said).
    pub fn answered(&mut self) {
        self.in_flight = false;
    }

    fn leave_mark(&self) {
        if let Some((marks, key, fingerprint)) = &self.mark {
            marks.insert(*key, *fingerprint);
        }
    }
}

impl Drop for Doubt {
    fn drop(&mut self) {
        if self.in_flight {
            self.leave_mark();
        }
    }
}

#[derive(Debug)]
struct Kept<V> {
    fingerprint: Fingerprint,
    value: V,
}

#[derive(Debug)]
struct Passed<E> {
    fingerprint: Fingerprint,
    error: Arc<E>,
}

/// The request ids of one gateway process and what became of them.
pub struct Ledger<V> {
    answers: Cache<Key, Arc<Kept<V>>, DigestHasher>,
    in_doubt: Marks,
    journal: Option<Arc<Journal>>,
}

impl<V> std::fmt::Debug for Ledger<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("answers", &self.answers.entry_count())
            .field("in_doubt", &self.in_doubt.entry_count())
            .finish()
    }
}

impl<V> Ledger<V>
where
    V: Footprint + Clone + Send + Sync + 'static,
{
    /// A ledger keeping each outcome for `ttl`, and at most `capacity` entries (an answer of more
    /// than [`WEIGHT_UNIT`] bytes counts once per unit).
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        let answers = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .weigher(|_: &Key, kept: &Arc<Kept<V>>| weight(kept.value.footprint()))
            .build_with_hasher(DigestHasher::default());
        let in_doubt = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .build_with_hasher(DigestHasher::default());
        Self {
            answers,
            in_doubt,
            journal: None,
        }
    }

    /// Keeps the in-doubt markers in `journal` too, starting from the keys it recovered, so that
    /// they outlive the process.
    pub fn attach_journal(&mut self, journal: Journal, in_doubt: &[(Key, Fingerprint)]) {
        for (key, fingerprint) in in_doubt {
            self.in_doubt.insert(*key, *fingerprint);
        }
        self.journal = Some(Arc::new(journal));
    }

    fn close(&self, key: Key) {
        if let Some(journal) = &self.journal
            && let Err(e) = journal.closed(key)
        {
            tracing::warn!(error = %e, "cannot record a request id settled in --state-dir");
        }
    }

    /// Runs `call` once for `key`: a repeat gets the kept answer, a concurrent one waits for the
    /// call in flight, and a different request under the same key runs nothing. `retry`: the
    /// caller says this call repeats one this process may not have seen, so its doubt is assumed.
    pub async fn run<E, F, Fut>(
        &self,
        key: Key,
        fingerprint: Fingerprint,
        retry: bool,
        call: F,
    ) -> Outcome<V, E>
    where
        E: Send + Sync + 'static,
        F: FnOnce(Doubt) -> Fut,
        Fut: Future<Output = Ending<V, E>>,
    {
        if let Some(marked) = self.in_doubt.get(&key)
            && marked != fingerprint
        {
            return Outcome::Reused;
        }
        let mut ran = false;
        let init = async {
            ran = true;
            let marked = self.in_doubt.contains_key(&key);
            let doubt = Doubt {
                mark: Some((self.in_doubt.clone(), key, fingerprint)),
                journal: self.journal.clone(),
                in_flight: false,
                opened: false,
                before: marked || retry,
            };
            match call(doubt).await {
                Ending::Final(value) => {
                    if marked {
                        self.in_doubt.invalidate(&key);
                    }
                    self.close(key);
                    Ok(Arc::new(Kept { fingerprint, value }))
                }
                Ending::Passing { error, in_doubt } => {
                    if in_doubt {
                        self.in_doubt.insert(key, fingerprint);
                    } else if !marked {
                        self.close(key);
                    }
                    let error = Arc::new(error);
                    Err(Passed { fingerprint, error })
                }
            }
        };
        let result = self.answers.try_get_with(key, init).await;
        match result {
            Ok(kept) if kept.fingerprint == fingerprint => Outcome::Answer {
                result: Ok(kept.value.clone()),
                replayed: !ran,
            },
            Err(passed) if passed.fingerprint == fingerprint => Outcome::Answer {
                result: Err(passed.error.clone()),
                replayed: !ran,
            },
            Ok(_) | Err(_) => Outcome::Reused,
        }
    }

    /// Answers kept now (after pending evictions), for tests and the benchmark.
    pub async fn kept(&self) -> u64 {
        self.answers.run_pending_tasks().await;
        self.answers.entry_count()
    }

    /// The total weight of the answers kept now, in entries.
    pub async fn weight(&self) -> u64 {
        self.answers.run_pending_tasks().await;
        self.answers.weighted_size()
    }
}

/// The capacity an answer of `bytes` takes: one entry per started [`WEIGHT_UNIT`].
fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(WEIGHT_UNIT).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
