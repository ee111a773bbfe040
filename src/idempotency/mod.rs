//! Request ids (AIP-155): what the gateway remembers of each `(account_id, request_id)`, so that a
//! caller's retries end with one user and one answer (docs/design.md §7).
//!
//! One bounded, expiring map (`ledger`), keyed by a 128-bit hash of the account and the id, holds
//! one entry per key:
//! - *running*: the first call is in flight, and what it knows of its outcome ([`Progress`]: an
//!   attempt in flight, an unknown outcome) is kept here, beside it. Calls with the same key and
//!   request wait for it and get its answer, even one that is not kept; a call with another
//!   request is told the id is reused.
//! - *kept*: the final outcome of the first call, with a fingerprint of its request. A repeat
//!   with the same fingerprint gets it again; one with another fingerprint is a reused id.
//! - *in doubt*: a marker left by a call that ended, however it ended (an answer, its deadline, a
//!   refusal, its future dropped by a cancel or the shutdown drain), with an attempt in flight or
//!   one whose outcome was unknown. The next repeat then knows that a conflict may be its own
//!   earlier create; a call that ends with a final answer replaces it.
//!
//! With `--state-dir`, the in-doubt markers are also written to a journal (`journal`) before each
//! call's first attempt leaves, so that a restarted process still knows them. Keys and
//! fingerprints are SipHash under a secret ([`KeyedHasher`]): the process's own, or with `--state-dir`
//! the directory's, so that every process using it computes the same ones. A journal of an
//! earlier version holds SHA-256 digests, which any caller can compute: they are recognised for
//! one TTL after the newest of them, and never computed after.
//!
//! Owns keys, fingerprints, what is kept and for how long; knows nothing of HTTP, gRPC statuses
//! or the upstream. Never sees an email in clear beyond hashing it.

use std::{hash::Hasher, sync::Arc};

use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::pb::chime::v1::CreateUserRequest;

pub mod journal;
mod ledger;

pub use journal::{Journal, Recovered};
pub use ledger::{Entry, Ledger, Ticket};

/// An answer's size is charged to the capacity in units of this many bytes.
pub const WEIGHT_UNIT: usize = 1024;

/// Which call a request id belongs to: a 128-bit hash of the account and the id
/// ([`Ledger::identify`] picks the function).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 16]);

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.head());
    }
}

/// Hashes a [`Key`] by taking the bytes it writes (a hash already), instead of SipHash over them
/// again.
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

impl Key {
    /// The first eight bytes: already uniform, as good a hash as any.
    fn head(&self) -> u64 {
        let (head, _) = self.0.split_first_chunk::<8>().expect("16 bytes");
        u64::from_le_bytes(*head)
    }

    /// The key of `request_id` in `account_id` as a SHA-256 digest, the same in every process:
    /// what a journal of an earlier version keeps.
    pub fn digest(account_id: &str, request_id: uuid::Uuid) -> Self {
        let mut h = Sha256::new();
        key_input(&mut h, account_id, request_id);
        Self(first_half(h))
    }

    /// The key of `request_id` in `account_id` under `local`'s secret (see [`KeyedHasher`]).
    pub fn keyed(account_id: &str, request_id: uuid::Uuid, local: &KeyedHasher) -> Self {
        let mut h = local.0;
        key_input(&mut h, account_id, request_id);
        Self(h.finish128().as_bytes())
    }
}

fn key_input(h: &mut impl HashInput, account_id: &str, request_id: uuid::Uuid) {
    field(h, Some(account_id.as_bytes()));
    h.take_in(request_id.as_bytes());
}

/// What a request asks for (account, email, username, user type), so a reused id is noticed
/// without keeping the request itself: a 128-bit hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The fingerprint of a request as a SHA-256 digest, the same in every process (see
    /// [`Key::digest`]); the request id itself is not part of it.
    pub fn digest(request: &CreateUserRequest) -> Self {
        let mut h = Sha256::new();
        fingerprint_input(&mut h, request);
        Self(first_half(h))
    }

    /// The fingerprint of a request under `local`'s secret (see [`KeyedHasher`]).
    pub fn keyed(request: &CreateUserRequest, local: &KeyedHasher) -> Self {
        let mut h = local.0;
        fingerprint_input(&mut h, request);
        Self(h.finish128().as_bytes())
    }
}

fn fingerprint_input(h: &mut impl HashInput, request: &CreateUserRequest) {
    field(h, Some(request.account_id.as_bytes()));
    fingerprint_rest(h, request);
}

/// What a fingerprint takes in after the account.
fn fingerprint_rest(h: &mut impl HashInput, request: &CreateUserRequest) {
    field(h, request.email.as_deref().map(str::as_bytes));
    field(h, request.username.as_deref().map(str::as_bytes));
    h.take_in(&request.user_type.to_be_bytes());
}

/// A call's key and fingerprint: [`Key::digest`] and [`Fingerprint::digest`] without `local`,
/// [`Key::keyed`] and [`Fingerprint::keyed`] with it. Both begin with the account, so it is taken in
/// once, and the hash's state after it copied for the key.
fn identify(
    request: &CreateUserRequest,
    request_id: uuid::Uuid,
    local: Option<&KeyedHasher>,
) -> (Key, Fingerprint) {
    /// The hash of the key and the hash of the fingerprint, from one state that took in the
    /// account.
    fn split<H: HashInput + Clone>(mut h: H, request: &CreateUserRequest, request_id: uuid::Uuid) -> (H, H) {
        field(&mut h, Some(request.account_id.as_bytes()));
        let mut key = h.clone();
        key.take_in(request_id.as_bytes());
        fingerprint_rest(&mut h, request);
        (key, h)
    }
    match local {
        None => {
            let (key, fingerprint) = split(Sha256::new(), request, request_id);
            (Key(first_half(key)), Fingerprint(first_half(fingerprint)))
        }
        Some(local) => {
            let (key, fingerprint) = split(local.0, request, request_id);
            (
                Key(key.finish128().as_bytes()),
                Fingerprint(fingerprint.finish128().as_bytes()),
            )
        }
    }
}

/// How keys and fingerprints are computed: SipHash-1-3 (the function of Rust's own hash maps),
/// 128 bits, under a secret drawn at random, by the process or (`--state-dir`) once for its
/// directory. The secret never leaves the gateway, so no caller can choose an id whose key
/// another call's has, or ids whose keys fall in one bucket of a map; about a third of two
/// SHA-256 digests' cost.
#[derive(Clone, Copy)]
pub struct KeyedHasher(SipHasher13);

impl KeyedHasher {
    /// Hashing under a fresh random key.
    pub fn new() -> Self {
        Self::with_secret(rand::random())
    }

    /// Hashing under `secret`: a `--state-dir`'s, so that every process using it computes the
    /// same keys.
    pub fn with_secret(secret: [u8; 16]) -> Self {
        Self(SipHasher13::new_with_key(&secret))
    }
}

impl Default for KeyedHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHasher(..)")
    }
}

/// Takes in the bytes a key or fingerprint is computed from, the same for either function.
trait HashInput {
    fn take_in(&mut self, bytes: &[u8]);
}

impl HashInput for Sha256 {
    fn take_in(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl HashInput for SipHasher13 {
    fn take_in(&mut self, bytes: &[u8]) {
        self.write(bytes);
    }
}

/// The first 128 bits of a digest: as unlikely to collide by chance as the whole, for the
/// capacity a ledger holds, in half the space.
fn first_half(h: Sha256) -> [u8; 16] {
    let digest: [u8; 32] = h.finalize().into();
    let (half, _) = digest.split_first_chunk::<16>().expect("32 bytes");
    *half
}

/// Takes in a field with its presence and length, so no two requests share an input.
fn field(h: &mut impl HashInput, value: Option<&[u8]>) {
    match value {
        None => h.take_in(&[0]),
        Some(v) => {
            h.take_in(&[1]);
            h.take_in(&(v.len() as u64).to_be_bytes());
            h.take_in(v);
        }
    }
}

/// An answer a request id keeps, and the bytes it is kept as: kept answers are many, and only
/// repeats read them back.
pub trait Keep: Clone {
    /// Appends the bytes to keep to `into`: written once, by the call that got the answer.
    fn store(&self, into: &mut Vec<u8>);

    /// The answer again, for a repeat, from the bytes [`Keep::store`] wrote.
    fn replay(stored: &[u8]) -> Self;
}

/// How a call with a request id ended, as its repeats need to know it.
#[derive(Debug)]
pub enum Ending<V, E> {
    /// An answer no retry can change: kept, and every repeat gets it.
    Final(V),
    /// An answer a retry may change: given to this call and those that waited for it, never
    /// kept. Whether the id stays in doubt is what the call's [`Progress`] says.
    Transient(E),
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
    /// The deadline passed while this call waited for the first call with its id.
    Waited,
}

/// Where a call's [`Progress`] is kept: beside the call's running entry in the ledger, so that
/// however the call ends (an answer, an error, a dropped future, the shutdown drain) the entry's
/// end reads what the call knew.
/// Each method names the call by its key and its number in the ledger, so that a `Progress`
/// kept past its call's end changes nothing.
trait Track: Send + Sync {
    /// An attempt of the call is about to be sent.
    fn sent(&self, call: (Key, u64));
    /// The attempt in flight came back; `unknown` when its answer does not say whether it
    /// created the user.
    fn answered(&self, call: (Key, u64), unknown: bool);
    /// An attempt is in flight, or one came back with an unknown outcome.
    fn unsettled(&self, call: (Key, u64)) -> bool;
}

/// What one call knows of whether it created the user: nothing sent, an attempt in flight, an
/// unknown outcome, or settled (docs/design.md §7). The knowledge lives in the ledger, not in the
/// call's future: once an attempt is in flight or has come back unknown, the request id stays in
/// doubt however the call ends, until a final answer (the user, found or created) settles it. A
/// lookup that finds nothing allows another attempt, but settles nothing: a create can land after
/// the lookup that missed it. A call without a request id has a `Progress` that tracks nothing.
#[derive(Clone, Copy)]
pub struct Progress<'a> {
    call: Option<(&'a dyn Track, (Key, u64))>,
    before: bool,
}

impl std::fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("request_id", &self.call.is_some())
            .field("unsettled", &self.unsettled())
            .field("before", &self.before)
            .finish()
    }
}

impl Progress<'_> {
    /// For a call without a request id: nothing before it, nothing to keep.
    pub fn none() -> Self {
        Self {
            call: None,
            before: false,
        }
    }

    /// Whether the call has a request id, so that a retry of it can settle what this call leaves
    /// in doubt.
    pub fn has_request_id(&self) -> bool {
        self.call.is_some()
    }

    /// An earlier call with this request id ended without knowing whether it created the user,
    /// or the caller says this call is a retry: a conflict may be the caller's own user.
    pub fn before(&self) -> bool {
        self.before
    }

    /// Notes that an attempt is about to be sent (with `--state-dir`, the id is in the journal
    /// when this returns): from now until [`Progress::answered`], the call's end leaves its id in
    /// doubt.
    pub fn sent(&self) {
        if let Some((track, call)) = self.call {
            track.sent(call);
        }
    }

    /// Notes that the attempt in flight came back; `unknown`: its answer does not say whether it
    /// created the user, and the id stays in doubt until the call ends with a final answer.
    pub fn answered(&self, unknown: bool) {
        if let Some((track, call)) = self.call {
            track.answered(call, unknown);
        }
    }

    /// Whether an attempt is in flight, or one came back with an unknown outcome.
    pub fn unsettled(&self) -> bool {
        self.call.is_some_and(|(track, call)| track.unsettled(call))
    }
}

/// The capacity an answer of `bytes` takes: one entry per started [`WEIGHT_UNIT`].
fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(WEIGHT_UNIT).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[path = "idempotency_tests.rs"]
mod tests;
