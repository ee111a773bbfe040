//! The map behind request ids: one entry per key, in shards under a lock each, every settled
//! entry (a kept answer, an in-doubt marker) expiring `ttl` after it was written.
//!
//! Every settled entry is also queued in the order it was written. All entries live equally
//! long, so the front of the queue is both the next to expire and the oldest, and it is what goes
//! when the shard is over its capacity: expiry and the bound are one queue, checked each time an
//! entry is written. An entry replaced or removed leaves its place in the queue stale (told apart
//! by a stamp) until it reaches the front; the queue is held to twice the capacity, so no pattern
//! of calls grows it past that. Running entries (calls in flight) are not counted: the gateway's
//! concurrency limit bounds them.

use std::{
    collections::{HashMap, VecDeque, hash_map},
    future::Future,
    hash::BuildHasherDefault,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{
    sync::oneshot,
    time::{Instant, timeout_at},
};

use super::{DigestHasher, Doubt, Ending, Fingerprint, Journal, Keep, Key, Marks, Outcome, weight};

/// Shards are used only when each holds at least this many entries (so small capacities stay
/// exact), and there are at most [`MAX_SHARDS`].
const SHARD_MIN: u64 = 1024;
const MAX_SHARDS: u64 = 16;
/// How long settled entries live when the TTL is too long to add to the clock: 100 years.
const FOREVER: Duration = Duration::from_secs(3_155_760_000);

type Reply<V, E> = oneshot::Sender<Result<V, Arc<E>>>;

/// The first call with a key, in flight.
struct Running<V, E> {
    fingerprint: Fingerprint,
    /// The key was in doubt when the call began.
    marked: bool,
    /// The call's [`Doubt`] was dropped with an attempt in flight.
    dropped_in_flight: bool,
    /// Calls with the same key and request, waiting for this one's answer.
    waiters: Vec<Reply<V, E>>,
}

/// What a call left for its repeats.
struct Settled<S> {
    fingerprint: Fingerprint,
    /// The kept answer; `None` for a key in doubt.
    answer: Option<S>,
    /// Which place in the queue is this entry's.
    stamp: u64,
    expires: Instant,
    weight: u32,
}

enum Entry<V: Keep, E> {
    Running(Running<V, E>),
    Settled(Settled<V::Stored>),
}

struct Shard<V: Keep, E> {
    entries: HashMap<Key, Entry<V, E>, BuildHasherDefault<DigestHasher>>,
    /// Settled entries as they were written, oldest first: `(key, stamp)`.
    order: VecDeque<(Key, u64)>,
    /// The weight of the settled entries.
    weight: u64,
    stamps: u64,
}

impl<V: Keep, E> Shard<V, E> {
    fn new() -> Self {
        Self {
            entries: HashMap::default(),
            order: VecDeque::new(),
            weight: 0,
            stamps: 0,
        }
    }

    /// Writes a settled entry for `key` (replacing one there) at `now`, to live until `expires`,
    /// then lets out what expired and what is over `capacity`.
    fn settle(
        &mut self,
        key: Key,
        fingerprint: Fingerprint,
        answer: Option<V::Stored>,
        (now, expires): (Instant, Instant),
        capacity: u64,
    ) {
        let weight = answer.as_ref().map_or(1, |a| weight(V::footprint(a)));
        if u64::from(weight) > capacity {
            // Heavier than the whole shard: keeping it would only push everything else out.
            return;
        }
        let stamp = self.stamps;
        self.stamps += 1;
        let entry = Entry::Settled(Settled {
            fingerprint,
            answer,
            stamp,
            expires,
            weight,
        });
        if let Some(Entry::Settled(old)) = self.entries.insert(key, entry) {
            self.weight -= u64::from(old.weight);
        }
        self.weight += u64::from(weight);
        self.order.push_back((key, stamp));
        self.evict(now, capacity);
    }

    /// Removes settled entries from the front of the queue while they have expired or the shard
    /// is over its capacity, and stale places as they reach the front.
    fn evict(&mut self, now: Instant, capacity: u64) {
        while let Some(&(key, stamp)) = self.order.front() {
            if let Some(Entry::Settled(s)) = self.entries.get(&key)
                && s.stamp == stamp
            {
                let over = self.weight > capacity || self.order.len() as u64 > 2 * capacity;
                if !over && s.expires > now {
                    return;
                }
                self.weight -= u64::from(s.weight);
                self.entries.remove(&key);
            }
            self.order.pop_front();
        }
    }
}

/// What a call finds under its key.
enum Begin<V, E> {
    /// Nothing running or kept: this call runs; `marked` if the key is in doubt.
    Run { marked: bool },
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
    /// The capacity of each shard.
    capacity: u64,
}

impl<V: Keep, E> Shared<V, E> {
    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard<V, E>> {
        // The digest's second eight bytes: the map hashes the first eight.
        let (_, rest) = key.0.split_first_chunk::<8>().expect("32 bytes");
        let bits = u64::from_le_bytes(*rest.first_chunk::<8>().expect("24 bytes"));
        let index = (bits % self.shards.len() as u64) as usize;
        self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Now, and when an entry written now expires: one read of the clock per write.
    fn clock(&self) -> (Instant, Instant) {
        let now = Instant::now();
        (now, now.checked_add(self.ttl).unwrap_or(now + FOREVER))
    }

    fn begin(&self, key: Key, fingerprint: Fingerprint) -> Begin<V, E> {
        let running = |marked| {
            Entry::Running(Running {
                fingerprint,
                marked,
                dropped_in_flight: false,
                waiters: Vec::new(),
            })
        };
        let mut shard = self.shard(&key);
        let Shard { entries, weight, .. } = &mut *shard;
        let mut occupied = match entries.entry(key) {
            hash_map::Entry::Vacant(vacant) => {
                vacant.insert(running(false));
                return Begin::Run { marked: false };
            }
            hash_map::Entry::Occupied(occupied) => occupied,
        };
        match occupied.get_mut() {
            Entry::Running(r) if r.fingerprint != fingerprint => Begin::Reused,
            Entry::Running(r) => {
                let (reply, wait) = oneshot::channel();
                r.waiters.push(reply);
                Begin::Wait(wait)
            }
            Entry::Settled(s) => {
                let live = s.expires > Instant::now();
                if live && s.fingerprint != fingerprint {
                    return Begin::Reused;
                }
                if live && let Some(stored) = &s.answer {
                    return Begin::Replay(V::replay(stored));
                }
                // Expired, or in doubt: this call runs. Its place in the queue goes stale.
                *weight -= u64::from(s.weight);
                occupied.insert(running(live));
                Begin::Run { marked: live }
            }
        }
    }

    /// Ends the running call for `key`: keeps `answer`, or leaves the key in doubt if the call
    /// (or one before it) left it so. Returns the calls that waited, and whether it is in doubt.
    fn finish(&self, key: Key, answer: Option<V::Stored>, in_doubt: bool) -> (Vec<Reply<V, E>>, bool) {
        let clock = self.clock();
        let mut shard = self.shard(&key);
        let Some(Entry::Running(running)) = shard.entries.remove(&key) else {
            unreachable!("only the running call ends its entry");
        };
        let doubted = in_doubt || running.marked || running.dropped_in_flight;
        if answer.is_some() || doubted {
            shard.settle(key, running.fingerprint, answer, clock, self.capacity);
        }
        (running.waiters, doubted)
    }

    /// Leaves `key` in doubt (replacing a marker there, never a kept answer or another call's
    /// run).
    fn mark(&self, key: Key, fingerprint: Fingerprint) {
        let clock = self.clock();
        let mut shard = self.shard(&key);
        match shard.entries.get_mut(&key) {
            Some(Entry::Running(r)) => {
                if r.fingerprint == fingerprint {
                    r.dropped_in_flight = true;
                }
            }
            Some(Entry::Settled(s)) if s.answer.is_some() && s.expires > clock.0 => {}
            _ => shard.settle(key, fingerprint, None, clock, self.capacity),
        }
    }
}

impl<V: Keep + Send + 'static, E: Send + Sync + 'static> Marks for Shared<V, E>
where
    V::Stored: Send,
{
    fn dropped_in_flight(&self, key: Key, fingerprint: Fingerprint) {
        self.mark(key, fingerprint);
    }
}

/// The request ids of one gateway process and what became of them.
pub struct Ledger<V: Keep, E> {
    shared: Arc<Shared<V, E>>,
    journal: Option<Arc<Journal>>,
}

impl<V: Keep, E> std::fmt::Debug for Ledger<V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("answers", &self.count(|s| s.answer.is_some()))
            .field("in_doubt", &self.count(|s| s.answer.is_none()))
            .finish()
    }
}

/// Ends the running entry of a call that is dropped before it ends: its waiters see their
/// channel close, and one of them runs instead.
struct Flight<'a, V: Keep, E> {
    ledger: &'a Ledger<V, E>,
    key: Key,
    ended: bool,
}

impl<V: Keep, E> Drop for Flight<'_, V, E> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (waiters, in_doubt) = self.ledger.shared.finish(self.key, None, false);
        drop(waiters);
        if !in_doubt {
            self.ledger.close(self.key);
        }
    }
}

impl<V, E> Ledger<V, E>
where
    V: Keep + Send + 'static,
    V::Stored: Send,
    E: Send + Sync + 'static,
{
    /// A ledger keeping each outcome for `ttl`, and at most `capacity` entries (an answer of more
    /// than [`super::WEIGHT_UNIT`] bytes counts once per unit).
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        let shards = (capacity / SHARD_MIN).clamp(1, MAX_SHARDS);
        let shards = 1 << shards.ilog2();
        let shared = Shared {
            shards: (0..shards).map(|_| Mutex::new(Shard::new())).collect(),
            ttl,
            capacity: capacity / shards,
        };
        Self {
            shared: Arc::new(shared),
            journal: None,
        }
    }

    /// Keeps the in-doubt markers in `journal` too, starting from the keys it recovered, so that
    /// they outlive the process.
    pub fn attach_journal(&mut self, journal: Journal, in_doubt: &[(Key, Fingerprint)]) {
        for (key, fingerprint) in in_doubt {
            self.shared.mark(*key, *fingerprint);
        }
        self.journal = Some(Arc::new(journal));
    }

    /// Runs `call` once for `key`: a repeat gets the kept answer, a concurrent one waits for the
    /// call in flight (until `deadline`), and a different request under the same key runs
    /// nothing. `retry`: the caller says this call repeats one this process may not have seen, so
    /// its doubt is assumed.
    pub async fn run<F, Fut>(
        &self,
        key: Key,
        fingerprint: Fingerprint,
        retry: bool,
        deadline: Instant,
        call: F,
    ) -> Outcome<V, E>
    where
        F: FnOnce(Doubt) -> Fut,
        Fut: Future<Output = Ending<V, E>>,
    {
        let marked = loop {
            let wait = match self.shared.begin(key, fingerprint) {
                Begin::Run { marked } => break marked,
                Begin::Replay(value) => {
                    return Outcome::Answer {
                        result: Ok(value),
                        replayed: true,
                    };
                }
                Begin::Reused => return Outcome::Reused,
                Begin::Wait(wait) => wait,
            };
            match timeout_at(deadline, wait).await {
                Ok(Ok(result)) => {
                    return Outcome::Answer {
                        result,
                        replayed: true,
                    };
                }
                // The call in flight was dropped without an answer: one of its waiters runs.
                Ok(Err(_)) => {}
                Err(_) => return Outcome::Waited,
            }
        };
        let mut flight = Flight {
            ledger: self,
            key,
            ended: false,
        };
        let marks: Arc<dyn Marks> = self.shared.clone();
        let doubt = Doubt {
            mark: Some((marks, key, fingerprint)),
            journal: self.journal.clone(),
            in_flight: false,
            opened: false,
            before: marked || retry,
        };
        // Dropped mid-call, the call (and its `Doubt`) goes before `flight`.
        let ending = call(doubt).await;
        flight.ended = true;
        match ending {
            Ending::Final(value) => {
                let (waiters, _) = self.shared.finish(key, Some(value.store()), false);
                self.close(key);
                for waiter in waiters {
                    let _ = waiter.send(Ok(value.clone()));
                }
                Outcome::Answer {
                    result: Ok(value),
                    replayed: false,
                }
            }
            Ending::Passing { error, in_doubt } => {
                let (waiters, in_doubt) = self.shared.finish(key, None, in_doubt);
                if !in_doubt {
                    self.close(key);
                }
                let error = Arc::new(error);
                for waiter in waiters {
                    let _ = waiter.send(Err(error.clone()));
                }
                Outcome::Answer {
                    result: Err(error),
                    replayed: false,
                }
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

    /// Whether `key` is in doubt now.
    pub fn in_doubt(&self, key: &Key) -> bool {
        let shard = self.shared.shard(key);
        matches!(shard.entries.get(key), Some(Entry::Settled(s)) if s.answer.is_none() && s.expires > Instant::now())
    }
}

impl<V: Keep, E> Ledger<V, E> {
    fn close(&self, key: Key) {
        if let Some(journal) = &self.journal
            && let Err(e) = journal.closed(key)
        {
            tracing::warn!(error = %e, "cannot record a request id settled in --state-dir");
        }
    }

    /// Settled entries alive now that `which` picks.
    fn count(&self, which: impl Fn(&Settled<V::Stored>) -> bool) -> u64 {
        let now = Instant::now();
        let mut n = 0;
        for shard in &self.shared.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            n += shard
                .entries
                .values()
                .filter(|e| matches!(e, Entry::Settled(s) if s.expires > now && which(s)))
                .count() as u64;
        }
        n
    }
}

#[cfg(test)]
impl<V: Keep, E> Ledger<V, E> {
    /// What a [`Doubt`] dropped with an attempt in flight does.
    pub(super) fn mark(&self, key: Key, fingerprint: Fingerprint) {
        self.shared.mark(key, fingerprint);
    }

    /// How many shards, and the longest queue of written entries among them.
    pub(super) fn shape(&self) -> (usize, usize) {
        let longest = self
            .shared
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).order.len())
            .max()
            .unwrap_or(0);
        (self.shared.shards.len(), longest)
    }
}
