//! `ListUsers`: the query's constraints (400 for a bad `max-results`, `user-type`, `user-email` or
//! `next-token`), then a page of the account's users (404 for an unknown account), in creation
//! order, with `NextToken` when more follow.
//!
//! A `next-token` is opaque to callers; here it is the index the next page starts at, so pages stay
//! stable while users are added (users are never removed).

use http::{Response, StatusCode};

use super::{
    Shared,
    state::{Refusal, UserFilter},
    wire::{self, Body, ListUsersQuery, NewUser, bad_request, unknown_account},
};
use crate::validate::{EMAIL, EMAIL_PATTERN};

/// `max-results` when the caller sends none.
pub const DEFAULT_MAX_RESULTS: usize = 100;
/// The largest `max-results` the model allows.
pub const MAX_MAX_RESULTS: usize = 200;

/// Serves a ListUsers whose signature and route have been checked.
pub(crate) fn serve(shared: &Shared, account_id: &str, query: &str) -> Response<Body> {
    let query = ListUsersQuery::parse(query);
    let filter = match filter(&query) {
        Ok(filter) => filter,
        Err(message) => return bad_request(&message),
    };
    let page = shared.state.lock().unwrap().list(account_id, &filter);
    match page {
        Ok(page) => {
            let users = page.users.iter().map(|u| NewUser::of(account_id, u));
            let body = wire::users_body(users, page.next.map(|n| n.to_string()));
            wire::json_response(StatusCode::OK, &body)
        }
        Err(Refusal::UnknownAccount) => unknown_account(account_id),
        Err(Refusal::DuplicateEmail) => unreachable!("listing never creates"),
    }
}

fn filter(query: &ListUsersQuery) -> Result<UserFilter<'_>, String> {
    let max_results = match query.max_results.as_deref() {
        None => DEFAULT_MAX_RESULTS,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_MAX_RESULTS).contains(n))
            .ok_or_else(|| {
                format!(
                    "1 validation error detected: Value '{text}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and {MAX_MAX_RESULTS}"
                )
            })?,
    };
    let shared_device = match query.user_type.as_deref() {
        None => None,
        Some("PrivateUser") => Some(false),
        Some("SharedDevice") => Some(true),
        Some(_) => return Err("1 validation error detected: Value at 'userType' failed to satisfy constraint: Member must satisfy enum value set: [PrivateUser, SharedDevice]".to_owned()),
    };
    if let Some(email) = &query.user_email
        && !EMAIL.is_match(email)
    {
        return Err(format!(
            "1 validation error detected: Value at 'userEmail' failed to satisfy constraint: Member must satisfy regular expression pattern: {EMAIL_PATTERN}"
        ));
    }
    let from = match query.next_token.as_deref() {
        None => 0,
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| "The next token is not valid.".to_owned())?,
    };
    Ok(UserFilter {
        email: query.user_email.as_deref(),
        shared_device,
        from,
        max_results,
    })
}
