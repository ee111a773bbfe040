//! Exactly-once however a call ends (docs/design.md §7). One call with a request id meets a
//! Chime that keeps its users, in one shape of fault; the call is ended at every point where it
//! waits (the k-th time its future is pending, for every k until it finishes by itself): its
//! future dropped (a caller's cancel or disconnect), or the shutdown drain's canceller, followed by
//! a new process on the same `--state-dir`. Then the caller retries with the same request id. The
//! retry ends with the caller's own user, never ALREADY_EXISTS, and Chime holds exactly one user
//! for the email. Every protection is at its default. The clock is paused, so the walk is the same
//! on every run and takes no real time.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use super::*;
use crate::idempotency::Journal;

const EMAIL: &str = "jane@example.com";
/// How long the stand-in Chime takes to answer.
const LATENCY: Duration = Duration::from_millis(10);

/// What one create meets.
#[derive(Debug, Clone, Copy)]
enum Create {
    /// Stored, and the answer lost on the way back: an unknown outcome.
    StoredLost,
    /// Refused before anything was stored, with a `Retry-After` of this many seconds.
    Unavailable(Option<u64>),
    /// Refused by the account's throttle.
    Throttled,
}

/// What one lookup meets.
#[derive(Debug, Clone, Copy)]
enum Lookup {
    /// Takes this long, then answers what is stored.
    Slow(Duration),
    /// Answers that nothing is stored, whatever is (a read that has not caught up yet).
    Stale,
}

/// A Chime that keeps users: a create of an email already taken is a 409, a lookup finds what is
/// stored. A create is stored when it arrives and answered [`LATENCY`] later, so a call dropped
/// while its attempt is out leaves a user it never heard of. Faults come from two scripts, one
/// entry per request; an empty script answers as a healthy Chime.
#[derive(Default)]
struct Chime {
    users: Mutex<HashMap<String, String>>,
    creates: Mutex<VecDeque<Create>>,
    lookups: Mutex<VecDeque<Lookup>>,
    made: AtomicU32,
}

impl Chime {
    fn new(creates: &[Create], lookups: &[Lookup]) -> Arc<Self> {
        Arc::new(Self {
            creates: Mutex::new(creates.iter().copied().collect()),
            lookups: Mutex::new(lookups.iter().copied().collect()),
            ..Default::default()
        })
    }

    /// The ids of the users stored for [`EMAIL`].
    fn users(&self) -> Vec<String> {
        self.users
            .lock()
            .unwrap()
            .get(EMAIL)
            .cloned()
            .into_iter()
            .collect()
    }

    /// Stores a user for `email` unless one is there: its id, or `None` for a conflict.
    fn store(&self, email: &str) -> Option<String> {
        let mut users = self.users.lock().unwrap();
        if users.contains_key(email) {
            return None;
        }
        let id = format!("user-{}", self.made.fetch_add(1, Ordering::SeqCst) + 1);
        users.insert(email.to_owned(), id.clone());
        Some(id)
    }
}

impl Upstream for Arc<Chime> {
    async fn create_user(&self, input: CreateUserInput) -> Result<Created, UpstreamError> {
        let fault = self.creates.lock().unwrap().pop_front();
        let email = input.email().unwrap_or_default().to_owned();
        let stored = match fault {
            Some(Create::Unavailable(after)) => {
                tokio::time::sleep(LATENCY).await;
                return Err(status(503, after.map(Duration::from_secs)));
            }
            Some(Create::Throttled) => {
                tokio::time::sleep(LATENCY).await;
                return Err(status(429, None));
            }
            Some(Create::StoredLost) | None => self.store(&email),
        };
        tokio::time::sleep(LATENCY).await;
        match (fault, stored) {
            (Some(Create::StoredLost), _) => Err(lost()),
            (_, None) => Err(status(409, None)),
            (_, Some(id)) => Ok(Created {
                output: CreateUserOutput::builder().user(user(&id)).build(),
                request_id: Some(format!("create-{id}")),
            }),
        }
    }

    async fn find_user_by_email(&self, _account_id: &str, email: &str) -> LookupAnswer {
        let fault = self.lookups.lock().unwrap().pop_front();
        let wait = match fault {
            Some(Lookup::Slow(wait)) => wait,
            _ => LATENCY,
        };
        tokio::time::sleep(wait).await;
        if matches!(fault, Some(Lookup::Stale)) {
            return Ok(None);
        }
        let id = self.users.lock().unwrap().get(email).cloned();
        Ok(id.map(|id| Found {
            user: user(&id),
            request_id: Some("list".into()),
        }))
    }
}

/// A shape of fault the call meets: its creates and its lookups, and the calls made before it
/// (on other request ids and emails) to put the gateway's protections in the state it needs.
struct Shape {
    name: &'static str,
    before: &'static [Create],
    creates: &'static [Create],
    lookups: &'static [Lookup],
    /// The retry budget's knobs, where the shape needs a budget that refuses.
    budget: Option<BudgetConfig>,
}

/// A lookup slower than a create, within the attempt timeout.
const SLOW: Lookup = Lookup::Slow(Duration::from_millis(500));

fn shapes() -> Vec<Shape> {
    let shape = |name, before, creates, lookups| Shape {
        name,
        before,
        creates,
        lookups,
        budget: None,
    };
    vec![
        shape("an unknown outcome", &[], &[Create::StoredLost], &[]),
        shape("a slow lookup", &[], &[Create::StoredLost], &[SLOW]),
        shape(
            "a backoff with Retry-After",
            &[],
            &[Create::Unavailable(Some(1)), Create::StoredLost],
            &[SLOW],
        ),
        shape(
            "a backoff after a lookup that missed",
            &[],
            &[Create::StoredLost, Create::Unavailable(None)],
            &[Lookup::Stale],
        ),
        shape(
            "a 409 after an unknown outcome",
            &[],
            &[Create::StoredLost],
            &[Lookup::Stale, SLOW],
        ),
        shape(
            "a throttle that refuses",
            &[Create::Throttled, Create::Throttled, Create::Throttled],
            &[Create::Throttled, Create::StoredLost],
            &[SLOW],
        ),
        Shape {
            name: "a budget refusal",
            before: &[],
            creates: &[Create::StoredLost],
            lookups: &[],
            budget: Some(BudgetConfig {
                reserve: 0.0,
                ..BudgetConfig::default()
            }),
        },
    ]
}

/// How the call is ended at its k-th wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The caller goes away: the call's future is dropped.
    Drop,
    /// The gateway shuts down: its canceller ends the call, and a new process takes over.
    Drain,
}

/// Polls a future, counting the times it is pending; at the `k`-th, hands it to `end`.
struct EndAt<F> {
    inner: Option<Pin<Box<F>>>,
    pending: u32,
    k: u32,
    on_end: Option<Box<dyn FnOnce() + Send>>,
    end: End,
}

/// What became of a call ended by [`EndAt`].
enum Ended<T> {
    /// Finished before its k-th wait.
    Finished(T),
    /// Dropped at its k-th wait.
    Dropped,
    /// Drained at its k-th wait, and then finished with this.
    Drained(T),
}

impl<F: Future> Future for EndAt<F> {
    type Output = Ended<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Ended::Dropped);
        };
        let done = match inner.as_mut().poll(cx) {
            Poll::Ready(out) if this.pending >= this.k => return Poll::Ready(Ended::Drained(out)),
            Poll::Ready(out) => return Poll::Ready(Ended::Finished(out)),
            Poll::Pending => {
                this.pending += 1;
                this.pending == this.k
            }
        };
        if done {
            match this.end {
                End::Drop => {
                    this.inner = None;
                    return Poll::Ready(Ended::Dropped);
                }
                End::Drain => {
                    if let Some(cancel) = this.on_end.take() {
                        cancel();
                    }
                    cx.waker().wake_by_ref();
                }
            }
        }
        Poll::Pending
    }
}

/// A gateway at its defaults over `chime`, with the journal in `dir` if given.
fn gateway_over(chime: &Arc<Chime>, dir: Option<&StateDir>, shape: &Shape) -> ChimeGateway<Arc<Chime>> {
    let mut policy = policy(3);
    policy.default_deadline = Duration::from_secs(15);
    let mut gw = ChimeGateway::new(chime.clone(), policy, 64);
    if let Some(budget) = shape.budget {
        gw = gw.with_retry_budget(Some(budget));
    }
    match dir {
        Some(dir) => {
            let (journal, recovered) = Journal::open(&dir.0, DEFAULT_IDEMPOTENCY_TTL, 100).unwrap();
            let capacity = DEFAULT_IDEMPOTENCY_CAPACITY;
            gw.with_request_ids(RequestIds::journaled(
                DEFAULT_IDEMPOTENCY_TTL,
                capacity,
                journal,
                recovered,
            ))
        }
        None => gw,
    }
}

/// Calls made before the one under test, on other emails and without request ids.
async fn warm_up(gw: &ChimeGateway<Arc<Chime>>, chime: &Chime, shape: &Shape) {
    for (n, fault) in shape.before.iter().enumerate() {
        chime.creates.lock().unwrap().push_back(*fault);
        let mut request = valid().into_inner();
        request.email = Some(format!("other-{n}@example.com"));
        let _ = gw.create_user(Request::new(request)).await;
    }
}

/// What the caller may see of a call before its retry: its user, or a status a retry may change.
fn acceptable(result: &Result<Response<CreateUserResponse>, Status>) -> bool {
    match result {
        Ok(_) => true,
        Err(s) => s.code() != Code::AlreadyExists && s.code() != Code::InvalidArgument,
    }
}

/// Runs one call of `shape`, ended at its `k`-th wait by `end`, then its retry. `None` once the
/// call finished before its `k`-th wait (the walk is over).
async fn walk_once(shape: &Shape, k: u32, end: End, journaled: bool) -> Option<()> {
    let dir = journaled.then(StateDir::new);
    let chime = Chime::new(&[], &[]);
    let gw = Arc::new(gateway_over(&chime, dir.as_ref(), shape));
    warm_up(&gw, &chime, shape).await;
    chime.creates.lock().unwrap().extend(shape.creates);
    chime.lookups.lock().unwrap().extend(shape.lookups);
    let canceller = gw.canceller();
    let call = {
        let gw = gw.clone();
        async move { gw.create_user(with_email(ID)).await }
    };
    let ended = EndAt {
        inner: Some(Box::pin(call)),
        pending: 0,
        k,
        on_end: Some(Box::new(move || canceller.cancel())),
        end,
    }
    .await;
    let at = format!(
        "{} ended by {end:?} at wait {k} (journal: {journaled})",
        shape.name
    );
    let first = match ended {
        Ended::Finished(result) => {
            assert!(acceptable(&result), "{at}: the call itself answered {result:?}");
            return None;
        }
        Ended::Dropped => None,
        Ended::Drained(result) => Some(result),
    };
    if let Some(result) = &first {
        assert!(acceptable(result), "{at}: the drained call answered {result:?}");
    }
    // A drained gateway's process ends; the retry reaches the next one, on the same directory.
    // Without one, the caller says the call is a retry.
    let (gw, declared) = match end {
        End::Drop => (gw, false),
        End::Drain => {
            drop(gw);
            (Arc::new(gateway_over(&chime, dir.as_ref(), shape)), dir.is_none())
        }
    };
    // The faults were the first call's: the retry meets a healthy Chime, once what the first call
    // left in flight has landed.
    chime.creates.lock().unwrap().clear();
    chime.lookups.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut retry = with_email(ID);
    if declared {
        retry
            .metadata_mut()
            .insert(PREVIOUS_ATTEMPTS_KEY, MetadataValue::from_static("1"));
    }
    let retried = gw.create_user(retry).await;
    let users = chime.users();
    assert_eq!(users.len(), 1, "{at}: Chime holds {users:?}");
    match retried {
        Ok(response) => assert_eq!(user_id(&response), users[0], "{at}: the retry's user"),
        Err(s) => panic!("{at}: the retry answered {:?} {}", s.code(), s.message()),
    }
    Some(())
}

/// Walks every wait of every shape, ended by `end`, with and without a journal.
async fn walk(end: End) {
    for shape in shapes() {
        for journaled in [false, true] {
            let mut k = 1;
            while walk_once(&shape, k, end, journaled).await.is_some() {
                k += 1;
                assert!(k < 200, "{}: the call never finishes", shape.name);
            }
            assert!(k > 1, "{}: the call never waited", shape.name);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_at_any_wait_leaves_its_retry_its_own_user() {
    walk(End::Drop).await;
}

#[tokio::test(start_paused = true)]
async fn a_call_drained_at_any_wait_leaves_the_next_process_its_retrys_own_user() {
    walk(End::Drain).await;
}
