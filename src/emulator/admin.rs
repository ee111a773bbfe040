//! The emulator's admin API under `/_emulator/`, so tests in any language can script the
//! standalone binary: inject faults, start or stop chaos, read back requests, add accounts.
//! Unsigned; never a Chime path.

use http::{Method, Response, StatusCode, request::Parts};
use serde::Deserialize;
use serde_json::json;

use super::{ChaosConfig, Fault, Operation, Shared, Stats, faults::Chaos, wire};

/// The path prefix of every admin route.
pub(crate) const PREFIX: &str = "/_emulator/";

#[derive(Deserialize)]
struct InjectBody {
    fault: Fault,
    #[serde(default = "one")]
    times: u32,
    #[serde(default)]
    operation: Operation,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct AccountBody {
    account_id: String,
}

/// Answers an admin request.
pub(crate) fn handle(shared: &Shared, parts: &Parts, body: &[u8]) -> Response<wire::Body> {
    let route = parts.uri.path().strip_prefix(PREFIX).unwrap_or("");
    match (&parts.method, route) {
        (&Method::GET, "health") => wire::json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::POST, "faults") => match serde_json::from_slice::<InjectBody>(body) {
            Ok(b) => {
                shared.inject(b.operation, b.fault, b.times);
                no_content()
            }
            Err(e) => invalid(&e),
        },
        (&Method::POST, "chaos") => match serde_json::from_slice::<ChaosConfig>(body) {
            Ok(c) => {
                *shared.chaos.lock().unwrap() = Some(Chaos::new(c));
                no_content()
            }
            Err(e) => invalid(&e),
        },
        (&Method::DELETE, "chaos") => {
            *shared.chaos.lock().unwrap() = None;
            no_content()
        }
        (&Method::GET, "requests") => {
            let recorded: Vec<_> = shared.recorded.lock().unwrap().iter().cloned().collect();
            wire::json_response(StatusCode::OK, &json!(recorded))
        }
        (&Method::DELETE, "requests") => {
            shared.recorded.lock().unwrap().clear();
            no_content()
        }
        (&Method::GET, "stats") => {
            let stats = shared.stats.lock().unwrap().clone();
            wire::json_response(StatusCode::OK, &json!(stats))
        }
        (&Method::DELETE, "stats") => {
            *shared.stats.lock().unwrap() = Stats::default();
            no_content()
        }
        (&Method::POST, "accounts") => match serde_json::from_slice::<AccountBody>(body) {
            Ok(b) => {
                shared.state.lock().unwrap().add_account(&b.account_id);
                no_content()
            }
            Err(e) => invalid(&e),
        },
        _ => wire::json_response(StatusCode::NOT_FOUND, &json!({"message": "no such admin route"})),
    }
}

fn no_content() -> Response<wire::Body> {
    let mut r = Response::new(wire::Body::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn invalid(error: &serde_json::Error) -> Response<wire::Body> {
    wire::json_response(StatusCode::BAD_REQUEST, &json!({"message": error.to_string()}))
}
