//! The map behind request ids: one entry per key, in shards under a lock each (one shard for every
//! four cores, so one on a small sidecar), every settled entry (a kept answer, an in-doubt marker)
//! expiring `ttl` after it was written.
//!
//! A settled entry is a record in a queue, in the order it was written, and its kept answer is
//! bytes in a second queue, in the same order; the shard's table holds only each key's place in
//! the first. All entries live equally long, so the front of the queue is both the next to expire
//! and the oldest, and it is what goes when the shard is over its capacity: expiry and the bound
//! are one queue, checked each time an entry is written. A record replaced or removed goes stale
//! (it no longer counts) and stays until it reaches the front; the queue is held to twice the
//! capacity, so no pattern of calls grows it past that. A kept answer is replaced or removed only
//! once it has expired (before, repeats get it), and what has expired is at the front, let out by
//! the next write: the bytes of answers that no longer count do not stay. Running entries (calls
//! in flight) are in a map of their own, not counted: the gateway's concurrency limit bounds
//! them.
//!
//! Kept small, since a busy gateway's other work leaves the caches cold between one call's
//! request-id work and the next: the table's slots are one number each, and a record is one cache line
//! (128-bit keys and fingerprints, its expiry in nanoseconds); records and answers are written at
//! the back of their queues and let out at the front, in order, with no allocation of their own
//! (an answer is written, under the shard's lock, into a buffer the shard reuses, while the lines
//! it is copied to load); and letting an entry out touches only its record. Its place in the
//! table stays, naming a record already gone, until the table is full and such places are cleared
//! in one pass.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    hash::BuildHasherDefault,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use hashbrown::{HashTable, hash_table};
use tokio::{
    sync::oneshot,
    time::{Instant, timeout_at},
};

use uuid::Uuid;

use super::{
    DigestHasher, Ending, Fingerprint, Journal, Keep, Key, KeyedHasher, Outcome, Progress, Track,
    WEIGHT_UNIT, weight,
};
use crate::pb::chime::v1::CreateUserRequest;

/// Shards are used only when each holds at least this many entries (so small capacities stay
/// exact), and there are at most [`MAX_SHARDS`].
const SHARD_MIN: u64 = 1024;
const MAX_SHARDS: u64 = 16;
/// Cores per shard: a gateway has a shard for every this many cores it may run on (at least one).
/// A shard that every call visits stays in the caches of the cores between calls (its lock, its
/// map of calls in flight, the backs of its queues, its buffer); where calls run on many cores at
/// once, shards keep them from waiting on one lock.
const CORES_PER_SHARD: usize = 4;
/// How much of the answers' queue past its back is loaded ahead: a kept user is about 300 bytes.
const PREFETCH_ANSWER: usize = 384;
/// The largest buffer a shard keeps for writing answers into; one grown past it by a larger
/// answer is let go.
const SCRATCH_MAX: usize = 4 * 1024;

type Reply<V, E> = oneshot::Sender<Result<V, Arc<E>>>;

/// The first call with a key, in flight.
struct Running<V, E> {
    fingerprint: Fingerprint,
    /// Which call this is, among all the shard's: a [`Progress`] names its own call only.
    call: u64,
    /// The key was in doubt when the call began.
    marked: bool,
    /// An attempt is in flight.
    in_flight: bool,
    /// An attempt came back with an outcome unknown.
    unknown: bool,
    /// The key is open in the journal (written at the call's first attempt).
    opened: bool,
    /// Calls with the same key and request, waiting for this one's answer.
    waiters: Vec<Reply<V, E>>,
}

/// What a call left for its repeats, in the queue: one cache line.
#[repr(align(64))]
struct Record {
    key: Key,
    fingerprint: Fingerprint,
    /// When it expires, on the ledger's [`Shared::now`] clock.
    expires: u64,
    /// Where the kept answer starts in the shard's bytes, counted from the first byte ever kept.
    at: u64,
    /// The kept answer's length; `None` for a key in doubt. A stale record keeps it, so that its
    /// bytes go with it.
    answer: Option<u32>,
    /// What the record counts against the capacity; 0 once stale.
    weight: u32,
}

const _: () = assert!(std::mem::size_of::<Record>() == 64);

struct Shard<V, E> {
    running: HashMap<Key, Running<V, E>, BuildHasherDefault<DigestHasher>>,
    /// Each settled key's stamp (the place of its record, counted from the first ever written),
    /// hashed by the key; keys are told apart by their records. A stamp before `first` names a
    /// record let out: it matches no key, and is cleared when the table is full.
    settled: HashTable<u64>,
    /// Settled entries as they were written, oldest first.
    records: VecDeque<Record>,
    /// The stamp of the record at the front.
    first: u64,
    /// The kept answers of `records`, one after the other in the same order.
    bytes: VecDeque<u8>,
    /// Where `bytes` starts, counted from the first byte ever kept.
    first_byte: u64,
    /// The weight of the settled entries.
    weight: u64,
    /// Where a kept answer is written before it is copied into `bytes`: reused, so that keeping an
    /// answer allocates nothing.
    scratch: Vec<u8>,
    /// The number of the next call to run.
    calls: u64,
}

impl<V, E> Shard<V, E> {
    fn new() -> Self {
        Self {
            running: HashMap::default(),
            settled: HashTable::new(),
            records: VecDeque::new(),
            first: 0,
            bytes: VecDeque::new(),
            first_byte: 0,
            weight: 0,
            scratch: Vec::new(),
            calls: 0,
        }
    }

    /// Starts loading the cache lines that writing an entry touches in the queues (the back of
    /// each, where the record and its answer go, and the record at the front, which may be let
    /// out), so that they arrive while the answer is being written.
    fn prefetch(&self) {
        let record = std::mem::size_of::<Record>();
        if let Some(front) = self.records.front() {
            prefetch(std::ptr::from_ref(front).cast(), record);
        }
        if let Some(back) = self.records.back() {
            prefetch(std::ptr::from_ref(back).cast::<u8>().wrapping_add(record), record);
        }
        let (head, tail) = self.bytes.as_slices();
        if let Some(last) = tail.last().or(head.last()) {
            prefetch(std::ptr::from_ref(last).wrapping_add(1), PREFETCH_ANSWER);
        }
    }

    /// The settled entry of `key`, live or expired.
    fn get(&self, key: &Key) -> Option<&Record> {
        let Self {
            settled,
            records,
            first,
            ..
        } = self;
        let stamp = settled.find(key.head(), |&s| holds(records, *first, s, key))?;
        Some(at(records, *first, *stamp))
    }

    /// The bytes of `record`'s kept answer.
    fn answer(&self, record: &Record) -> Option<Vec<u8>> {
        let start = (record.at - self.first_byte) as usize;
        let end = start + record.answer? as usize;
        Some(self.bytes.range(start..end).copied().collect())
    }

    /// Removes the settled entry of `key`, if any: its record goes stale.
    fn unlink(&mut self, key: &Key) {
        let Self {
            settled,
            records,
            first,
            weight,
            ..
        } = self;
        if let Ok(place) = settled.find_entry(key.head(), |&s| holds(records, *first, s, key)) {
            let (stamp, _) = place.remove();
            *weight -= u64::from(forget(records, *first, stamp));
        }
    }

    /// Writes a settled entry for `key` (replacing one there) at `now`, to live until `expires`,
    /// then lets out what expired and what is over `capacity`.
    fn settle(
        &mut self,
        key: Key,
        fingerprint: Fingerprint,
        answer: Option<&[u8]>,
        (now, expires): (u64, u64),
        capacity: u64,
    ) {
        let weight = answer.map_or(1, |a| weight(a.len()));
        if u64::from(weight) > capacity {
            // Heavier than the whole shard: keeping it would only push everything else out.
            self.unlink(&key);
            return;
        }
        let stamp = self.first + self.records.len() as u64;
        let Self {
            settled,
            records,
            first,
            bytes,
            first_byte,
            weight: total,
            ..
        } = self;
        if settled.len() == settled.capacity() {
            // Full: clear the places of records let out before the table grows (or rehashes,
            // which reads the record of every place).
            settled.retain(|s| *s >= *first);
        }
        // One probe finds the entry to replace or the slot to fill.
        let place = settled.entry(
            key.head(),
            |&s| holds(records, *first, s, &key),
            |&s| at(records, *first, s).key.head(),
        );
        match place {
            hash_table::Entry::Occupied(mut place) => {
                let old = std::mem::replace(place.get_mut(), stamp);
                *total -= u64::from(forget(records, *first, old));
            }
            hash_table::Entry::Vacant(place) => {
                place.insert(stamp);
            }
        }
        let at = *first_byte + bytes.len() as u64;
        if let Some(answer) = answer {
            let most = usize::try_from(capacity).map_or(usize::MAX, |c| c.saturating_mul(WEIGHT_UNIT));
            make_room(bytes, answer.len(), most);
            bytes.extend(answer);
        }
        let most = usize::try_from(capacity).map_or(usize::MAX, |c| c.saturating_mul(2)) + 1;
        make_room(records, 1, most);
        records.push_back(Record {
            key,
            fingerprint,
            expires,
            at,
            answer: answer.map(|a| u32::try_from(a.len()).expect("an answer under 4 GiB")),
            weight,
        });
        *total += u64::from(weight);
        self.evict(now, capacity);
    }

    /// Lets out settled entries from the front of the queue while they have expired or the
    /// shard is over its capacity, and stale records as they reach the front.
    fn evict(&mut self, now: u64, capacity: u64) {
        while let Some(front) = self.records.front() {
            let over = self.weight > capacity || self.records.len() as u64 > capacity.saturating_mul(2);
            if front.weight > 0 && !over && front.expires > now {
                return;
            }
            self.weight -= u64::from(front.weight);
            let len = front.answer.unwrap_or(0);
            self.bytes.drain(..len as usize);
            self.first_byte += u64::from(len);
            self.records.pop_front();
            self.first += 1;
        }
    }
}

/// Makes room in `queue` for `more` items, growing it by half (not doubling, as a `VecDeque` does
/// by itself) and never past `most` items unless the items need it: a full shard's queues hold
/// about what they must, so the memory's bound holds with little slack (docs/configuration.md,
/// "Memory").
fn make_room<T>(queue: &mut VecDeque<T>, more: usize, most: usize) {
    let need = queue.len() + more;
    if need <= queue.capacity() {
        return;
    }
    let grown = queue.capacity() + queue.capacity() / 2;
    queue.reserve_exact(grown.min(most).max(need) - queue.len());
}

/// Hints to the processor that the `len` bytes from `at` are about to be used. Only a hint: an
/// address past the end of a buffer is never read.
fn prefetch(at: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..len).step_by(64) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of every x86_64 processor, and a prefetch neither reads memory
        // into the program nor faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(offset).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, len);
}

/// Whether `stamp`, in a queue whose front is `first`, is the live record of `key`.
fn holds(records: &VecDeque<Record>, first: u64, stamp: u64, key: &Key) -> bool {
    stamp >= first && at(records, first, stamp).key == *key
}

/// The record of `stamp` in a queue whose front is `first`.
fn at(records: &VecDeque<Record>, first: u64, stamp: u64) -> &Record {
    &records[(stamp - first) as usize]
}

/// Makes the record of `stamp` stale. Returns the weight it counted.
fn forget(records: &mut VecDeque<Record>, first: u64, stamp: u64) -> u32 {
    std::mem::take(&mut records[(stamp - first) as usize].weight)
}

/// What a call finds under its key.
enum Begin<V, E> {
    /// Nothing running or kept: this call runs, as `call`; `marked` if the key is in doubt.
    Run { marked: bool, call: u64 },
    /// The kept answer of an earlier call.
    Replay(V),
    /// The answer of the call in flight, when it comes.
    Wait(oneshot::Receiver<Result<V, Arc<E>>>),
    /// Another request holds the key.
    Reused,
}

struct Shared<V: Keep, E> {
    shards: Box<[Mutex<Shard<V, E>>]>,
    ttl: Duration,
    /// Where the ledger's clock starts.
    epoch: Instant,
    /// The capacity of each shard.
    capacity: u64,
}

impl<V: Keep, E> Shared<V, E> {
    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard<V, E>> {
        // The key's second eight bytes: the map hashes the first eight.
        let (_, rest) = key.0.split_first_chunk::<8>().expect("16 bytes");
        let bits = u64::from_le_bytes(*rest.first_chunk::<8>().expect("8 bytes"));
        let index = (bits % self.shards.len() as u64) as usize;
        self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Nanoseconds since the ledger was made: when entries expire, in eight bytes.
    fn now(&self) -> u64 {
        let since = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Now, and when an entry written now expires: one read of the clock per write.
    fn clock(&self) -> (u64, u64) {
        let now = self.now();
        let ttl = u64::try_from(self.ttl.as_nanos()).unwrap_or(u64::MAX);
        (now, now.saturating_add(ttl))
    }

    fn begin(&self, key: Key, fingerprint: Fingerprint) -> Begin<V, E> {
        let mut shard = self.shard(&key);
        let shard = &mut *shard;
        if let Some(running) = shard.running.get_mut(&key) {
            if running.fingerprint != fingerprint {
                return Begin::Reused;
            }
            let (reply, wait) = oneshot::channel();
            running.waiters.push(reply);
            return Begin::Wait(wait);
        }
        let mut marked = false;
        if let Some(record) = shard.get(&key) {
            let live = record.expires > self.now();
            if live && record.fingerprint != fingerprint {
                return Begin::Reused;
            }
            if live && let Some(stored) = shard.answer(record) {
                return Begin::Replay(V::replay(&stored));
            }
            // Expired, or in doubt: this call runs.
            marked = live;
            shard.unlink(&key);
        }
        let call = shard.calls;
        shard.calls += 1;
        shard.running.insert(
            key,
            Running {
                fingerprint,
                call,
                marked,
                in_flight: false,
                unknown: false,
                opened: false,
                waiters: Vec::new(),
            },
        );
        Begin::Run { marked, call }
    }

    /// Ends the running call for `key`: keeps `answer`, or leaves the key in doubt if the call
    /// (or one before it) left it so; otherwise closes it in `journal`, before the shard's lock is
    /// let go, so that no later call's open of the same key can come between. Returns the calls
    /// that waited.
    fn finish(&self, key: Key, answer: Option<&V>, journal: Option<&Journal>) -> Vec<Reply<V, E>> {
        let clock = self.clock();
        let mut shard = self.shard(&key);
        let mut stored = std::mem::take(&mut shard.scratch);
        if let Some(answer) = answer {
            // The queues' lines load while the answer is written, not one by one after.
            shard.prefetch();
            stored.clear();
            answer.store(&mut stored);
        }
        let running = shard
            .running
            .remove(&key)
            .expect("only the running call ends its entry");
        let doubted = answer.is_none() && (running.marked || running.in_flight || running.unknown);
        if answer.is_some() || doubted {
            let answer = answer.map(|_| &stored[..]);
            shard.settle(key, running.fingerprint, answer, clock, self.capacity);
        }
        if !doubted
            && let Some(journal) = journal
            && let Err(e) = journal.closed(key)
        {
            tracing::warn!(error = %e, "cannot record a request id settled in --state-dir");
        }
        if stored.capacity() <= SCRATCH_MAX {
            shard.scratch = stored;
        }
        running.waiters
    }

    /// Changes the running entry of `key` with `change`, if it is still `call`'s.
    fn running<T>(&self, (key, call): (Key, u64), change: impl FnOnce(&mut Running<V, E>) -> T) -> Option<T> {
        let mut shard = self.shard(&key);
        shard.running.get_mut(&key).filter(|r| r.call == call).map(change)
    }

    /// Whether `key` has an entry: a call running, or a settled entry alive.
    fn holds(&self, key: &Key) -> bool {
        let now = self.now();
        let shard = self.shard(key);
        shard.running.contains_key(key) || shard.get(key).is_some_and(|r| r.expires > now)
    }

    /// Leaves `key` in doubt (replacing a marker there, never a kept answer or another call's
    /// run).
    fn mark(&self, key: Key, fingerprint: Fingerprint) {
        let clock = self.clock();
        let mut shard = self.shard(&key);
        if let Some(running) = shard.running.get_mut(&key) {
            if running.fingerprint == fingerprint {
                running.marked = true;
            }
            return;
        }
        if let Some(record) = shard.get(&key)
            && record.answer.is_some()
            && record.expires > clock.0
        {
            return;
        }
        shard.settle(key, fingerprint, None, clock, self.capacity);
    }
}

impl<V: Keep + Send + 'static, E: Send + Sync + 'static> Track for Ledger<V, E> {
    fn sent(&self, call: (Key, u64)) {
        let key = call.0;
        let first = self.shared.running(call, |running| {
            running.in_flight = true;
            (!std::mem::replace(&mut running.opened, true)).then_some(running.fingerprint)
        });
        if let (Some(Some(fingerprint)), Some(journal)) = (first, &self.journal)
            && let Err(e) = journal.opened(key, fingerprint)
        {
            tracing::warn!(error = %e, "cannot record a request id in flight in --state-dir");
        }
    }

    fn answered(&self, call: (Key, u64), unknown: bool) {
        self.shared.running(call, |running| {
            running.in_flight = false;
            running.unknown |= unknown;
        });
    }

    fn unsettled(&self, call: (Key, u64)) -> bool {
        self.shared
            .running(call, |running| running.in_flight || running.unknown)
            .unwrap_or(false)
    }
}

/// The request ids of one gateway process and what became of them.
pub struct Ledger<V: Keep, E> {
    shared: Shared<V, E>,
    journal: Option<Journal>,
    /// What keys and fingerprints are hashed under.
    local: KeyedHasher,
    /// Until when a call may be one whose key is a SHA-256 digest, as a journal of an earlier
    /// version holds them (see [`Ledger::identify`]).
    digests_until: Option<Instant>,
}

impl<V: Keep, E> std::fmt::Debug for Ledger<V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("answers", &self.count(|s| s.answer.is_some()))
            .field("in_doubt", &self.count(|s| s.answer.is_none()))
            .finish()
    }
}

/// What a call with a request id finds as it begins.
pub enum Entry<'a, V: Keep, E> {
    /// No earlier call answers this one: it runs, reports what it sends to
    /// [`Ticket::progress`], and ends with [`Ticket::end`].
    Run(Ticket<'a, V, E>),
    /// An earlier call answers it (kept, or waited for), its id was reused, or its deadline
    /// passed while it waited.
    Done(Outcome<V, E>),
}

/// The running entry of a call with a request id. Dropped before [`Ticket::end`] (the call
/// cancelled, or drained at shutdown), it ends the entry unanswered: the calls waiting for it see
/// their channel close, and one of them runs instead; the id stays in doubt if the call's
/// [`Progress`] was unsettled, whatever was dropped first.
pub struct Ticket<'a, V: Keep, E> {
    ledger: &'a Ledger<V, E>,
    key: Key,
    /// Which call this is (see [`Running`]).
    call: u64,
    before: bool,
    ended: bool,
}

impl<V: Keep, E> Drop for Ticket<'_, V, E> {
    fn drop(&mut self) {
        if !self.ended {
            let ledger = self.ledger;
            drop(ledger.shared.finish(self.key, None, ledger.journal.as_ref()));
        }
    }
}

impl<'a, V, E> Ticket<'a, V, E>
where
    V: Keep + Send + 'static,
    E: Send + Sync + 'static,
{
    /// Where the call notes what it sends and learns (see [`Progress`]).
    pub fn progress(&self) -> Progress<'a> {
        Progress {
            call: Some((self.ledger as &dyn Track, (self.key, self.call))),
            before: self.before,
        }
    }

    /// Ends the call with `ending`: keeps a final answer, leaves the key in doubt if the call
    /// (or one before it) left it so, and answers the calls that waited.
    pub fn end(mut self, ending: Ending<V, E>) -> Outcome<V, E> {
        self.ended = true;
        let (ledger, key) = (self.ledger, self.key);
        let journal = ledger.journal.as_ref();
        let result = match ending {
            Ending::Final(value) => {
                for waiter in ledger.shared.finish(key, Some(&value), journal) {
                    let _ = waiter.send(Ok(value.clone()));
                }
                Ok(value)
            }
            Ending::Transient(error) => {
                let error = Arc::new(error);
                for waiter in ledger.shared.finish(key, None, journal) {
                    let _ = waiter.send(Err(error.clone()));
                }
                Err(error)
            }
        };
        Outcome::Answer {
            result,
            replayed: false,
        }
    }
}

impl<V, E> Ledger<V, E>
where
    V: Keep + Send + 'static,
    E: Send + Sync + 'static,
{
    /// A ledger keeping each outcome for `ttl`, and at most `capacity` entries (an answer of more
    /// than [`super::WEIGHT_UNIT`] bytes counts once per unit).
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self::for_cores(ttl, capacity, cores)
    }

    /// [`Ledger::new`] for a machine of `cores` cores: one shard per [`CORES_PER_SHARD`] cores,
    /// each holding at least [`SHARD_MIN`] entries, at most [`MAX_SHARDS`], a power of two.
    pub fn for_cores(ttl: Duration, capacity: u64, cores: usize) -> Self {
        let by_cores = (cores / CORES_PER_SHARD).max(1) as u64;
        let shards = (capacity / SHARD_MIN).clamp(1, MAX_SHARDS).min(by_cores);
        let shards = 1 << shards.ilog2();
        let shared = Shared {
            shards: (0..shards).map(|_| Mutex::new(Shard::new())).collect(),
            ttl,
            epoch: Instant::now(),
            capacity: capacity / shards,
        };
        Self {
            shared,
            journal: None,
            local: KeyedHasher::new(),
            digests_until: None,
        }
    }

    /// The key and fingerprint of a call as this ledger keeps them: SipHash under this process's
    /// own secret, or with a journal under its directory's, so that a restarted gateway finds the
    /// markers the one before it left. Within one TTL of the newest key a journal of an earlier
    /// version left (SHA-256 digests, which any caller can compute), a call whose digest this
    /// ledger holds (in doubt, running, or answered) is known by its digest instead; after it,
    /// digests are never computed.
    pub fn identify(&self, request: &CreateUserRequest, request_id: Uuid) -> (Key, Fingerprint) {
        if let Some(until) = self.digests_until
            && Instant::now() < until
        {
            let digest = super::identify(request, request_id, None);
            if self.shared.holds(&digest.0) {
                return digest;
            }
        }
        super::identify(request, request_id, Some(&self.local))
    }

    /// Keeps the in-doubt markers in `journal` too, starting from the keys it recovered, so that
    /// they outlive the process.
    pub fn attach_journal(&mut self, journal: Journal, in_doubt: &[(Key, Fingerprint)]) {
        for (key, fingerprint) in in_doubt {
            self.shared.mark(*key, *fingerprint);
        }
        self.local = journal.hashing();
        self.digests_until = journal.digests_until().map(|until| {
            let left = until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Instant::now() + left
        });
        self.journal = Some(journal);
    }

    /// Begins a call with `key`: a repeat gets the kept answer, a concurrent one waits for the
    /// call in flight (until `deadline`), and a different request under the same key is refused.
    /// Otherwise the call runs. `retry`: the caller says this call repeats one this process may
    /// not have seen, so its doubt is assumed.
    pub async fn enter(
        &self,
        key: Key,
        fingerprint: Fingerprint,
        retry: bool,
        deadline: Instant,
    ) -> Entry<'_, V, E> {
        let (marked, call) = loop {
            let wait = match self.shared.begin(key, fingerprint) {
                Begin::Run { marked, call } => break (marked, call),
                Begin::Replay(value) => {
                    return Entry::Done(Outcome::Answer {
                        result: Ok(value),
                        replayed: true,
                    });
                }
                Begin::Reused => return Entry::Done(Outcome::Reused),
                Begin::Wait(wait) => wait,
            };
            match timeout_at(deadline, wait).await {
                Ok(Ok(result)) => {
                    return Entry::Done(Outcome::Answer {
                        result,
                        replayed: true,
                    });
                }
                // The call in flight was dropped without an answer: one of its waiters runs.
                Ok(Err(_)) => {}
                Err(_) => return Entry::Done(Outcome::Waited),
            }
        };
        Entry::Run(Ticket {
            ledger: self,
            key,
            call,
            before: marked || retry,
            ended: false,
        })
    }

    /// [`Ledger::enter`], then `call` if the call runs, then [`Ticket::end`]. (A caller whose own
    /// future is large awaits its call beside the ticket instead, so that the call's future is
    /// not moved into this one.)
    pub async fn run<'a, F, Fut>(
        &'a self,
        key: Key,
        fingerprint: Fingerprint,
        retry: bool,
        deadline: Instant,
        call: F,
    ) -> Outcome<V, E>
    where
        F: FnOnce(Progress<'a>) -> Fut,
        Fut: Future<Output = Ending<V, E>>,
    {
        match self.enter(key, fingerprint, retry, deadline).await {
            Entry::Done(outcome) => outcome,
            Entry::Run(ticket) => {
                let progress = ticket.progress();
                ticket.end(call(progress).await)
            }
        }
    }

    /// Answers kept now, for tests and the benchmark.
    pub fn kept(&self) -> u64 {
        self.count(|s| s.answer.is_some())
    }

    /// The total weight of the answers and markers kept now, in entries.
    pub fn weight(&self) -> u64 {
        self.shared
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).weight)
            .sum()
    }

    /// Bytes the settled entries hold on the heap now, allocated room included: the answers'
    /// queue, the records' queue, the table of their places and the buffer answers are written
    /// into. (Calls in flight are not counted: the concurrency limit bounds them.)
    pub fn heap_bytes(&self) -> usize {
        let shard_bytes = |shard: &Shard<V, E>| {
            // hashbrown's table: a power of two of buckets at 7/8 load, 8 bytes and a control
            // byte each.
            let buckets = (shard.settled.capacity() * 8 / 7 + 1).next_power_of_two();
            shard.bytes.capacity()
                + shard.records.capacity() * std::mem::size_of::<Record>()
                + buckets * (std::mem::size_of::<u64>() + 1)
                + shard.scratch.capacity()
        };
        let shards = self.shared.shards.iter();
        shards
            .map(|s| shard_bytes(&s.lock().unwrap_or_else(PoisonError::into_inner)))
            .sum()
    }

    /// Whether `key` is in doubt now.
    pub fn in_doubt(&self, key: &Key) -> bool {
        let shard = self.shared.shard(key);
        let now = self.shared.now();
        matches!(shard.get(key), Some(r) if r.answer.is_none() && r.expires > now)
    }
}

impl<V: Keep, E> Ledger<V, E> {
    /// Settled entries alive now that `which` picks.
    fn count(&self, which: impl Fn(&Record) -> bool) -> u64 {
        let now = self.shared.now();
        let mut n = 0;
        for shard in &self.shared.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            n += shard
                .settled
                .iter()
                .filter(|&&stamp| stamp >= shard.first)
                .map(|&stamp| at(&shard.records, shard.first, stamp))
                .filter(|r| r.expires > now && which(r))
                .count() as u64;
        }
        n
    }
}

#[cfg(test)]
impl<V: Keep, E> Ledger<V, E> {
    /// The journal the ledger writes to.
    pub(super) fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Leaves `key` in doubt, as a recovered journal does.
    pub(super) fn mark(&self, key: Key, fingerprint: Fingerprint) {
        self.shared.mark(key, fingerprint);
    }

    /// How many shards, and the longest queue of written entries among them.
    pub(super) fn shape(&self) -> (usize, usize) {
        let longest = self
            .shared
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).records.len())
            .max()
            .unwrap_or(0);
        (self.shared.shards.len(), longest)
    }

    /// The largest buffer a shard keeps for writing answers into.
    pub(super) fn scratch(&self) -> usize {
        let shards = self.shared.shards.iter();
        let capacity = |s: &Mutex<Shard<V, E>>| {
            s.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .scratch
                .capacity()
        };
        shards.map(capacity).max().unwrap_or(0)
    }
}
