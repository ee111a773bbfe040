//! The call policy with a scripted in-memory upstream: no sockets.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use aws_sdk_chime::operation::create_user::{CreateUserInput, CreateUserOutput};
use tonic::Code;

use super::*;
use crate::error::ErrorResponse;

/// Answers from a script; counts attempts; an empty script answers success.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<UpstreamError>>,
    attempts: AtomicU32,
    delay: Duration,
}

impl Upstream for Arc<Scripted> {
    async fn create_user(&self, _input: CreateUserInput) -> Result<Created, UpstreamError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        match self.script.lock().unwrap().pop_front() {
            Some(error) => Err(error),
            None => Ok(Created {
                output: CreateUserOutput::builder().build(),
                request_id: None,
            }),
        }
    }
}

fn status(http: u16, retry_after: Option<Duration>) -> UpstreamError {
    UpstreamError::Response(ErrorResponse {
        status: http,
        retry_after,
        ..Default::default()
    })
}

fn policy(max_attempts: u32) -> CallPolicy {
    CallPolicy {
        upstream_timeout: Duration::from_secs(1),
        default_deadline: Duration::from_secs(2),
        max_attempts,
        backoff: Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        },
    }
}

fn gateway(script: Vec<UpstreamError>, max_attempts: u32) -> (ChimeGateway<Arc<Scripted>>, Arc<Scripted>) {
    let upstream = Arc::new(Scripted {
        script: Mutex::new(script.into()),
        ..Default::default()
    });
    (
        ChimeGateway::new(upstream.clone(), policy(max_attempts), 4),
        upstream,
    )
}

fn valid() -> Request<CreateUserRequest> {
    Request::new(CreateUserRequest {
        account_id: "a".into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn retryable_failures_are_retried_until_success() {
    let (gw, up) = gateway(vec![status(503, None), status(429, None)], 3);
    gw.create_user(valid()).await.unwrap();
    assert_eq!(up.attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retries_stop_at_max_attempts() {
    let (gw, up) = gateway((0..5).map(|_| status(503, None)).collect(), 2);
    let s = gw.create_user(valid()).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(up.attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failures_with_unknown_outcome_are_never_retried() {
    for error in [
        status(500, None),
        UpstreamError::AttemptTimeout,
        UpstreamError::ConnectionLost("reset".into()),
    ] {
        let (gw, up) = gateway(vec![error], 5);
        gw.create_user(valid()).await.unwrap_err();
        assert_eq!(up.attempts.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn a_retry_that_would_pass_the_deadline_is_not_made() {
    let (gw, up) = gateway(vec![status(429, Some(Duration::from_secs(60)))], 5);
    let started = Instant::now();
    let s = gw.create_user(valid()).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(up.attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_refused_at_once() {
    let upstream = Arc::new(Scripted {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let gw = Arc::new(ChimeGateway::new(upstream, policy(1), 2));
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.create_user(valid()).await.map(|_| ()).map_err(|s| s.code()) })
        })
        .collect();
    let mut codes = Vec::new();
    for call in calls {
        codes.push(call.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| c.is_ok()).count(), 2, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| **c == Err(Code::Unavailable)).count(),
        3,
        "{codes:?}"
    );
}

#[tokio::test]
async fn invalid_requests_never_reach_the_upstream() {
    let (gw, up) = gateway(vec![], 3);
    let s = gw
        .create_user(Request::new(CreateUserRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(up.attempts.load(Ordering::SeqCst), 0);
}

#[test]
fn grpc_timeout_units_are_parsed() {
    let parse = |v: &str| {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        caller_timeout(&m)
    };
    assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
    assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
    assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
    assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
    assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
    assert_eq!(parse("123456789S"), None, "at most 8 digits");
    assert_eq!(parse("S"), None);
    assert_eq!(parse("10x"), None);
    assert_eq!(caller_timeout(&MetadataMap::new()), None);
}

#[test]
fn backoff_grows_within_its_ceiling_and_honours_retry_after() {
    let b = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(35),
    };
    for _ in 0..100 {
        assert!(b.delay(1, None) <= Duration::from_millis(10));
        assert!(b.delay(2, None) <= Duration::from_millis(20));
        assert!(b.delay(9, None) <= Duration::from_millis(35));
    }
    assert_eq!(b.delay(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
}
