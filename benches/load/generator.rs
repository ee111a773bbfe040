//! A ghz-like load generator: closed loop (fixed concurrency) or open loop (fixed rate), every call
//! with a unique email, latencies in an HDR histogram and a count per gRPC code.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A process-unique number for a call's email.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The latencies (ms) a run counts the calls slower than.
pub const SLOW_MS: [u64; 4] = [5, 10, 25, 50];

/// What one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub codes: BTreeMap<String, u64>,
    /// p50 and p99 of the calls answered with a code other than OK, in microseconds.
    pub failed_p50_us: u64,
    pub failed_p99_us: u64,
    /// How many calls took longer than each of [`SLOW_MS`], in milliseconds.
    pub slower_than_ms: BTreeMap<u64, u64>,
}

#[derive(Default)]
struct Tally {
    ok: Option<Histogram<u64>>,
    failed: Option<Histogram<u64>>,
    all: Option<Histogram<u64>>,
    codes: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

impl Tally {
    fn record(&mut self, code: &str, took: Duration) {
        let us = (took.as_micros() as u64).clamp(1, 120_000_000);
        self.all.get_or_insert_with(histogram).record(us).unwrap();
        let which = if code == "OK" {
            &mut self.ok
        } else {
            &mut self.failed
        };
        which.get_or_insert_with(histogram).record(us).unwrap();
        *self.codes.entry(code.to_owned()).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        for (mine, theirs) in [
            (&mut self.ok, other.ok),
            (&mut self.failed, other.failed),
            (&mut self.all, other.all),
        ] {
            if let Some(h) = theirs {
                mine.get_or_insert_with(histogram).add(h).unwrap();
            }
        }
        for (k, v) in other.codes {
            *self.codes.entry(k).or_default() += v;
        }
    }

    fn finish(self, elapsed: Duration) -> Run {
        let all = self.all.unwrap_or_else(histogram);
        let failed = self.failed.unwrap_or_else(histogram);
        let seconds = elapsed.as_secs_f64();
        Run {
            requests: all.len(),
            seconds,
            rps: all.len() as f64 / seconds,
            p50_us: all.value_at_quantile(0.5),
            p90_us: all.value_at_quantile(0.9),
            p99_us: all.value_at_quantile(0.99),
            p999_us: all.value_at_quantile(0.999),
            max_us: all.max(),
            codes: self.codes,
            failed_p50_us: failed.value_at_quantile(0.5),
            failed_p99_us: failed.value_at_quantile(0.99),
            slower_than_ms: SLOW_MS
                .iter()
                .map(|&ms| (ms, all.len() - all.count_between(0, ms * 1000)))
                .collect(),
        }
    }
}

/// `concurrency` workers, each calling back to back until `duration` is over.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Run
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send,
{
    let end = Instant::now() + duration;
    workers(concurrency, call, move || Instant::now() < end).await
}

/// `concurrency` workers calling back to back until `calls` calls have been made.
pub async fn counted_loop<F, Fut>(concurrency: usize, calls: u64, call: F) -> Run
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send,
{
    let left = Arc::new(AtomicU64::new(calls));
    let take_one = move || {
        left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    };
    workers(concurrency, call, take_one).await
}

/// `concurrency` workers, each calling back to back while `go_on` says so.
async fn workers<F, Fut, G>(concurrency: usize, call: F, go_on: G) -> Run
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send,
    G: Fn() -> bool + Clone + Send + 'static,
{
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, go_on) = (call.clone(), go_on.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while go_on() {
                    let t = Instant::now();
                    let code = call(next_id()).await;
                    tally.record(&code, t.elapsed());
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.await.unwrap());
    }
    tally.finish(started.elapsed())
}

/// Calls started at a fixed `rate` per second for `duration`, whatever the answers' latency.
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, call: F) -> Run
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut first = true;
    paced(
        duration,
        move || {
            if std::mem::take(&mut first) {
                Duration::ZERO
            } else {
                interval
            }
        },
        call,
    )
    .await
}

/// Calls started as a Poisson process of `rate` per second for `duration` (independent callers:
/// the gaps are exponential, drawn from `seed` so that runs repeat), whatever the answers'
/// latency. Evenly spaced calls from many senders would lock in phase with a token bucket that
/// refills evenly, and the sender whose calls come just after each refill would take every token.
/// (The fleet bench's: the load bench does not use it.)
#[allow(dead_code)]
pub async fn poisson_loop<F, Fut>(rate: f64, duration: Duration, seed: u64, call: F) -> Run
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let gap = move || Duration::from_secs_f64(-(1.0 - rng.random::<f64>()).ln() / rate);
    paced(duration, gap, call).await
}

/// Calls started each `gap()` after the one before (the first `gap()` after the start), until
/// `duration` has passed; late starts catch up at once.
async fn paced<F, Fut>(duration: Duration, mut gap: impl FnMut() -> Duration, call: F) -> Run
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = tokio::time::Instant::now();
    let mut at = started;
    let mut calls = Vec::new();
    loop {
        at += gap();
        if at.duration_since(started) >= duration {
            break;
        }
        tokio::time::sleep_until(at).await;
        let (call, tally) = (call.clone(), tally.clone());
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let code = call(next_id()).await;
            tally.lock().unwrap().record(&code, t.elapsed());
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    tally.finish(started.elapsed())
}

/// One window of [`alternating`]: which kind of call ran, and what was measured over it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// 0 or 1: the index of the call that ran.
    pub arm: usize,
    /// How far the probe moved over the window.
    pub probed: Duration,
    /// Calls that finished within the window.
    pub calls: u64,
}

/// Two kinds of call made by the same `concurrency` workers, switching between them every
/// `window` in ABBA order (0, 1, 1, 0, 0, 1, ...) for `duration`. After each switch, calls of the
/// other kind still in flight get `settle` to finish; then `probe` for the window's kind (the CPU
/// time of the process that does its work, say) is read, and read again at the window's end,
/// with the count of calls that finished between.
/// Alternating this often puts both kinds under the same drift of a noisy machine.
/// Returns each kind's latencies, and the windows in order.
pub async fn alternating<F, Fut, P>(
    concurrency: usize,
    duration: Duration,
    (window, settle): (Duration, Duration),
    calls: [F; 2],
    probe: P,
) -> ([Run; 2], Vec<Window>)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send,
    P: Fn(usize) -> Duration,
{
    let arm = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (calls, arm, finished, stop) = (calls.clone(), arm.clone(), finished.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tallies = [Tally::default(), Tally::default()];
                while !stop.load(Ordering::Relaxed) {
                    let which = arm.load(Ordering::Relaxed) as usize;
                    let t = Instant::now();
                    let code = calls[which](next_id()).await;
                    tallies[which].record(&code, t.elapsed());
                    finished.fetch_add(1, Ordering::Relaxed);
                }
                tallies
            })
        })
        .collect();
    let mut windows = Vec::new();
    let mut spent = [Duration::ZERO; 2];
    for i in 0usize.. {
        if started.elapsed() + window > duration {
            break;
        }
        // ABBA: 0, 1, 1, 0, then again.
        let which = usize::from(matches!(i % 4, 1 | 2));
        let switched = Instant::now();
        arm.store(which as u64, Ordering::Relaxed);
        tokio::time::sleep(settle).await;
        let (from, before) = (probe(which), finished.load(Ordering::Relaxed));
        tokio::time::sleep(window - settle).await;
        let (to, after) = (probe(which), finished.load(Ordering::Relaxed));
        spent[which] += switched.elapsed();
        windows.push(Window {
            arm: which,
            probed: to.saturating_sub(from),
            calls: after - before,
        });
    }
    stop.store(true, Ordering::Relaxed);
    let mut tallies = [Tally::default(), Tally::default()];
    for w in workers {
        for (mine, theirs) in tallies.iter_mut().zip(w.await.unwrap()) {
            mine.merge(theirs);
        }
    }
    let [first, second] = tallies;
    ([first.finish(spent[0]), second.finish(spent[1])], windows)
}
