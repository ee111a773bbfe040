//! `CreateUser`: the model's patterns, then the store (404 for an unknown account, 409 for an email
//! the account already has), then a 201 `User` shaped like AWS's sample.

use http::{Response, StatusCode};
use time::OffsetDateTime;

use super::{
    Shared,
    state::{Refusal, StoredUser},
    wire::{self, Body, CreateUserBody, NewUser, bad_request, unknown_account},
};
use crate::validate::{ACCOUNT_ID, ACCOUNT_ID_PATTERN, EMAIL, EMAIL_PATTERN};

/// Serves a CreateUser whose signature and route have been checked.
pub(crate) fn serve(shared: &Shared, account_id: &str, body: &[u8]) -> Response<Body> {
    let input: CreateUserBody = match serde_json::from_slice(body) {
        Ok(input) => input,
        Err(_) if body.is_empty() => CreateUserBody::default(),
        Err(_) => return bad_request("The request body is not a valid CreateUser request."),
    };
    if let Some(message) = pattern_violation(account_id, &input) {
        return bad_request(&message);
    }
    let user = StoredUser {
        user_id: uuid::Uuid::new_v4().to_string(),
        shared_device: input.user_type.as_deref() == Some("SharedDevice"),
        email: input.email,
        username: input.username,
        created: OffsetDateTime::now_utc(),
    };
    let created = shared.state.lock().unwrap().create(account_id, user);
    match created {
        Ok(user) => wire::json_response(
            StatusCode::CREATED,
            &wire::user_body(&NewUser::of(account_id, &user)),
        ),
        Err(Refusal::UnknownAccount) => unknown_account(account_id),
        Err(Refusal::DuplicateEmail) => wire::chime_error(
            StatusCode::CONFLICT,
            "ConflictException",
            "Conflict",
            "A user with this email address already exists in the account.",
        ),
    }
}

fn pattern_violation(account_id: &str, input: &CreateUserBody) -> Option<String> {
    if !ACCOUNT_ID.is_match(account_id) {
        return Some(format!(
            "1 validation error detected: Value at 'accountId' failed to satisfy constraint: Member must satisfy regular expression pattern: {ACCOUNT_ID_PATTERN}"
        ));
    }
    if let Some(email) = &input.email
        && !EMAIL.is_match(email)
    {
        return Some(format!(
            "1 validation error detected: Value at 'email' failed to satisfy constraint: Member must satisfy regular expression pattern: {EMAIL_PATTERN}"
        ));
    }
    match input.user_type.as_deref() {
        None | Some("PrivateUser" | "SharedDevice") => None,
        Some(_) => Some("1 validation error detected: Value at 'userType' failed to satisfy constraint: Member must satisfy enum value set: [PrivateUser, SharedDevice]".to_owned()),
    }
}
