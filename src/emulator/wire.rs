//! restJson1 exactly as Amazon Chime puts it on the wire: the User body, error bodies and headers.
//!
//! Owns formatting only; no state, no decisions.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::FormatItem, macros::format_description};

/// The namespace AWS appends to `x-amzn-ErrorType`.
pub const ERROR_NAMESPACE: &str = "http://internal.amazon.com/coral/com.amazonaws.chime/";

const ISO_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// The response body type of every answer.
pub type Body = Full<Bytes>;

/// The `ListUsers` query (`user-email`, `user-type`, `max-results`, `next-token`), decoded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListUsersQuery {
    /// `user-email`.
    pub user_email: Option<String>,
    /// `user-type`.
    pub user_type: Option<String>,
    /// `max-results`, still text: the emulator answers 400 for a bad one.
    pub max_results: Option<String>,
    /// `next-token`.
    pub next_token: Option<String>,
}

impl ListUsersQuery {
    /// Reads a query string; the first value of a parameter counts, unknown ones are ignored.
    pub fn parse(query: &str) -> Self {
        let mut q = Self::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "user-email" => &mut q.user_email,
                "user-type" => &mut q.user_type,
                "max-results" => &mut q.max_results,
                "next-token" => &mut q.next_token,
                _ => continue,
            };
            slot.get_or_insert_with(|| value.into_owned());
        }
        q
    }
}

/// The CreateUser request body.
#[derive(Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateUserBody {
    /// `Email`.
    pub email: Option<String>,
    /// `Username`.
    pub username: Option<String>,
    /// `UserType`.
    pub user_type: Option<String>,
}

/// A user as the emulator creates it.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// `UserId`.
    pub user_id: &'a str,
    /// `AccountId`.
    pub account_id: &'a str,
    /// `PrimaryEmail`.
    pub email: Option<&'a str>,
    /// `DisplayName` and `FullName`.
    pub username: Option<&'a str>,
    /// `SharedDevice` or `PrivateUser`.
    pub shared_device: bool,
    /// When it was created.
    pub now: OffsetDateTime,
}

impl<'a> NewUser<'a> {
    /// A stored user of `account_id`, to describe it again.
    pub fn of(account_id: &'a str, user: &'a super::state::StoredUser) -> Self {
        Self {
            user_id: &user.user_id,
            account_id,
            email: user.email.as_deref(),
            username: user.username.as_deref(),
            shared_device: user.shared_device,
            now: user.created,
        }
    }
}

/// ISO 8601 with milliseconds, UTC, as Chime writes timestamps.
pub fn timestamp(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(ISO_MILLIS)
        .expect("a UTC time always formats")
}

/// The `{"User": ...}` body of CreateUser: see [`user`].
pub fn user_body(u: &NewUser<'_>) -> Value {
    json!({ "User": user(u) })
}

/// The `{"Users": [...], "NextToken": ...}` body of ListUsers; no `NextToken` on the last page.
pub fn users_body<'a>(users: impl Iterator<Item = NewUser<'a>>, next_token: Option<String>) -> Value {
    let users: Vec<Value> = users.map(|u| user(&u)).collect();
    match next_token {
        Some(token) => json!({ "Users": users, "NextToken": token }),
        None => json!({ "Users": users }),
    }
}

/// A `User` structure, every key AWS sends, in AWS's order.
///
/// A PrivateUser is invited (Unregistered, Pending, InvitedOn); a SharedDevice is registered at
/// once (Registered, RegisteredOn), as in the API reference's sample.
fn user(u: &NewUser<'_>) -> Value {
    let now = timestamp(u.now);
    let (user_type, registration, invitation, registered_on, invited_on) = if u.shared_device {
        (
            "SharedDevice",
            "Registered",
            Value::Null,
            Value::from(now),
            Value::Null,
        )
    } else {
        (
            "PrivateUser",
            "Unregistered",
            Value::from("Pending"),
            Value::Null,
            Value::from(now),
        )
    };
    json!({
        "AccountId": u.account_id,
        "AlexaForBusinessMetadata": {"AlexaForBusinessRoomArn": null, "IsAlexaForBusinessEnabled": false},
        "Delegates": null,
        "Devices": null,
        "DisplayName": u.username,
        "EmailAlias": [],
        "FullName": u.username,
        "InvitedOn": invited_on,
        "IsProTrial": false,
        "LastActiveOn": null,
        "LicenseType": "Pro",
        "PersonalPIN": null,
        "PresenceVisibility": null,
        "PrimaryEmail": u.email,
        "PrimaryProvisionedNumber": null,
        "RegisteredOn": registered_on,
        "UserId": u.user_id,
        "UserInvitationStatus": invitation,
        "UserLocale": null,
        "UserRegistrationStatus": registration,
        "UserType": user_type,
        "Vanity": null,
    })
}

/// A JSON response with `Content-Type: application/json`.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("a Value always serializes");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A Chime error: `x-amzn-ErrorType: <Type>:<namespace>` and `{"Code","Message"}`.
pub fn chime_error(status: StatusCode, error_type: &str, code: &str, message: &str) -> Response<Body> {
    let mut response = json_response(status, &json!({"Code": code, "Message": message}));
    set_error_type(&mut response, error_type);
    response
}

/// An error of the AWS front door (authentication, routing): the type and `{"message"}`.
pub fn front_door_error(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    let mut response = json_response(status, &json!({"message": message}));
    set_error_type(&mut response, error_type);
    response
}

/// Sets `x-amzn-ErrorType` as AWS does, with the namespace suffix.
pub fn set_error_type(response: &mut Response<Body>, error_type: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("{error_type}:{ERROR_NAMESPACE}")) {
        response.headers_mut().insert("x-amzn-ErrorType", v);
    }
}

/// The Chime `ErrorCode` that goes with an error type (`ConflictException` -> `Conflict`).
pub fn code_of_type(error_type: &str) -> &str {
    match error_type {
        "ThrottledClientException" => "Throttled",
        "UnauthorizedClientException" => "Unauthorized",
        other => other.strip_suffix("Exception").unwrap_or(other),
    }
}

/// A 400 `BadRequestException`, as the model's validation answers.
pub fn bad_request(message: &str) -> Response<Body> {
    chime_error(
        StatusCode::BAD_REQUEST,
        "BadRequestException",
        "BadRequest",
        message,
    )
}

/// A 404 `NotFoundException` for an account that does not exist.
pub fn unknown_account(account_id: &str) -> Response<Body> {
    chime_error(
        StatusCode::NOT_FOUND,
        "NotFoundException",
        "NotFound",
        &format!("The account {account_id} was not found."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_list_users_query_is_percent_decoded_and_the_first_value_counts() {
        let q = ListUsersQuery::parse(
            "user-email=jane%2Bx%40example.com&max-results=5&max-results=9&next-token=a%3D&x=1",
        );
        assert_eq!(
            q,
            ListUsersQuery {
                user_email: Some("jane+x@example.com".into()),
                user_type: None,
                max_results: Some("5".into()),
                next_token: Some("a=".into()),
            }
        );
    }

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        assert_eq!(
            timestamp(datetime!(2020-01-15 22:38:09.806 UTC)),
            "2020-01-15T22:38:09.806Z"
        );
        assert_eq!(
            timestamp(datetime!(2020-01-15 22:38:09 UTC)),
            "2020-01-15T22:38:09.000Z"
        );
    }

    #[test]
    fn a_shared_device_is_shaped_like_the_reference_sample() {
        let sample: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/create_user_sample_response.json"
        ))
        .unwrap();
        let user = NewUser {
            user_id: "1ab2345c-67de-8901-f23g-45h678901j2k",
            account_id: "12a3456b-7c89-012d-3456-78901e23fg45",
            email: Some(""),
            username: None,
            shared_device: true,
            now: datetime!(2020-01-15 22:38:09.806 UTC),
        };
        let mut ours = user_body(&user);
        // The sample's user had a name; ours was created without one.
        ours["User"]["DisplayName"] = sample["User"]["DisplayName"].clone();
        ours["User"]["FullName"] = sample["User"]["FullName"].clone();
        assert_eq!(ours, sample);
    }

    #[test]
    fn a_private_user_is_invited_not_registered() {
        let user = NewUser {
            user_id: "u",
            account_id: "a",
            email: Some("jane@example.com"),
            username: Some("jane"),
            shared_device: false,
            now: datetime!(2020-01-15 22:38:09.806 UTC),
        };
        let body = user_body(&user);
        assert_eq!(body["User"]["UserType"], "PrivateUser");
        assert_eq!(body["User"]["UserRegistrationStatus"], "Unregistered");
        assert_eq!(body["User"]["UserInvitationStatus"], "Pending");
        assert_eq!(body["User"]["InvitedOn"], "2020-01-15T22:38:09.806Z");
        assert_eq!(body["User"]["RegisteredOn"], Value::Null);
        assert_eq!(body["User"]["DisplayName"], "jane");
    }
}
