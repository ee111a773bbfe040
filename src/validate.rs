//! Checks a `CreateUserRequest` against the Chime model before any upstream call (docs/design.md §2).
//!
//! Patterns are the model's own, searched unanchored as Smithy does. Owns no I/O and never logs:
//! the email is sensitive.

use std::sync::LazyLock;

use regex::Regex;

use crate::pb::chime::v1::{CreateUserRequest, UserType};

/// The model's pattern for the `accountId` URI label.
pub const ACCOUNT_ID_PATTERN: &str = r".*\S.*";
/// The model's pattern for `Email`.
pub const EMAIL_PATTERN: &str = r".+@.+\..+";

pub(crate) static ACCOUNT_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(ACCOUNT_ID_PATTERN).unwrap());
pub(crate) static EMAIL: LazyLock<Regex> = LazyLock::new(|| Regex::new(EMAIL_PATTERN).unwrap());

/// One rule a request field breaks, named by its proto field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The proto field name, e.g. `email`.
    pub field: &'static str,
    /// What the field must be.
    pub description: String,
}

/// Returns every violation in the request; or, when an upstream call may be made, its request id
/// (`None` for a request without one), parsed here once.
pub fn validate(request: &CreateUserRequest) -> Result<Option<uuid::Uuid>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if !ACCOUNT_ID.is_match(&request.account_id) {
        violations.push(FieldViolation {
            field: "account_id",
            description: format!("account_id is required and must match the pattern {ACCOUNT_ID_PATTERN}"),
        });
    }
    if let Some(email) = &request.email
        && !EMAIL.is_match(email)
    {
        violations.push(FieldViolation {
            field: "email",
            description: format!("email must match the pattern {EMAIL_PATTERN}"),
        });
    }
    if UserType::try_from(request.user_type).is_err() {
        violations.push(FieldViolation {
            field: "user_type",
            description: format!("user_type {} is not a known UserType value", request.user_type),
        });
    }
    let id = request_id(&request.request_id);
    if !request.request_id.is_empty() && id.is_none() {
        violations.push(FieldViolation {
            field: "request_id",
            description: "request_id must be empty or a UUID in its canonical text form \
                          (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
                .to_owned(),
        });
    }
    if violations.is_empty() {
        Ok(id)
    } else {
        Err(violations)
    }
}

/// The request id of a request, when it has one in the canonical (hyphenated, 36-character)
/// form; letters may be in either case.
pub fn request_id(text: &str) -> Option<uuid::Uuid> {
    if text.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(account_id: &str, email: Option<&str>, user_type: i32) -> CreateUserRequest {
        CreateUserRequest {
            account_id: account_id.to_owned(),
            email: email.map(str::to_owned),
            username: None,
            user_type,
            request_id: String::new(),
        }
    }

    fn fields(result: Result<Option<uuid::Uuid>, Vec<FieldViolation>>) -> Vec<&'static str> {
        result.err().unwrap_or_default().iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_complete_request_is_valid() {
        let r = request("12a3456b", Some("jane@example.com"), UserType::PrivateUser as i32);
        assert_eq!(validate(&r), Ok(None));
    }

    #[test]
    fn unset_email_and_unspecified_user_type_are_valid() {
        assert_eq!(validate(&request("a", None, 0)), Ok(None));
    }

    #[test]
    fn empty_account_id_is_rejected() {
        assert_eq!(fields(validate(&request("", None, 0))), ["account_id"]);
    }

    #[test]
    fn whitespace_only_account_id_is_rejected() {
        assert_eq!(fields(validate(&request(" \t\n", None, 0))), ["account_id"]);
    }

    #[test]
    fn account_id_with_any_visible_character_is_accepted_unanchored() {
        assert_eq!(validate(&request("  x  ", None, 0)), Ok(None));
    }

    #[test]
    fn present_empty_email_is_rejected() {
        assert_eq!(fields(validate(&request("a", Some(""), 0))), ["email"]);
    }

    #[test]
    fn email_without_dot_after_at_is_rejected() {
        assert_eq!(
            fields(validate(&request("a", Some("jane@example"), 0))),
            ["email"]
        );
        assert_eq!(
            fields(validate(&request("a", Some("@example.com"), 0))),
            ["email"]
        );
    }

    #[test]
    fn email_pattern_is_searched_unanchored() {
        assert_eq!(validate(&request("a", Some("  x@y.z  "), 0)), Ok(None));
    }

    #[test]
    fn unknown_user_type_is_rejected() {
        assert_eq!(fields(validate(&request("a", None, 7))), ["user_type"]);
        assert_eq!(fields(validate(&request("a", None, -1))), ["user_type"]);
    }

    /// `.*\S.*` searched unanchored, without a regex: some character is not white space.
    fn account_oracle(s: &str) -> bool {
        s.chars().any(|c| !c.is_whitespace())
    }

    /// `.+@.+\..+` searched unanchored, without a regex: on one line (`.` never matches `\n`),
    /// an `@` with a character before it, then (after at least one character) a `.` with a
    /// character after it.
    fn email_oracle(s: &str) -> bool {
        s.split('\n').any(|line| {
            let chars: Vec<char> = line.chars().collect();
            let n = chars.len();
            (1..n).any(|at| chars[at] == '@' && (at + 2..n.saturating_sub(1)).any(|dot| chars[dot] == '.'))
        })
    }

    proptest::proptest! {
        #[test]
        fn account_id_validation_agrees_with_the_model(s in "[ \t\n\r\u{a0}\u{2003}a-c]{0,6}|\\PC{0,12}") {
            let r = request(&s, None, 0);
            proptest::prop_assert_eq!(validate(&r).is_ok(), account_oracle(&s));
        }

        #[test]
        fn email_validation_agrees_with_the_model(s in "[a@.\n ]{0,10}|\\PC{0,16}") {
            let r = request("acct", Some(&s), 0);
            proptest::prop_assert_eq!(validate(&r).is_ok(), email_oracle(&s), "{:?}", s);
        }

        #[test]
        fn only_known_user_types_pass(v in proptest::num::i32::ANY) {
            let r = request("acct", None, v);
            proptest::prop_assert_eq!(validate(&r).is_ok(), (0..=2).contains(&v));
        }
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let mut r = request("", Some("nope"), 9);
        r.request_id = "nope".into();
        assert_eq!(
            fields(validate(&r)),
            ["account_id", "email", "user_type", "request_id"]
        );
    }

    #[test]
    fn request_ids_are_empty_or_canonical_uuids() {
        let validated = |id: &str| {
            let mut r = request("a", None, 0);
            r.request_id = id.to_owned();
            validate(&r)
        };
        let with = |id: &str| fields(validated(id));
        let id = uuid::Uuid::from_u128(0x3f2b9c4e_8d1a_4c3e_9f6b_2a7d5e8c1b90);
        for (good, parsed) in [
            ("", None),
            ("3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b90", Some(id)),
            ("3F2B9C4E-8D1A-4C3E-9F6B-2A7D5E8C1B90", Some(id)),
            ("00000000-0000-0000-0000-000000000000", Some(uuid::Uuid::nil())),
        ] {
            assert_eq!(validated(good), Ok(parsed), "{good:?}");
        }
        for bad in [
            "3f2b9c4e8d1a4c3e9f6b2a7d5e8c1b90",
            "{3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b90}",
            "urn:uuid:3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b90",
            "3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b9g",
            "3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b9",
            " 3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b9",
            "3f2b9c4e+8d1a-4c3e-9f6b-2a7d5e8c1b90",
            "retry-1",
        ] {
            assert_eq!(with(bad), ["request_id"], "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_request_id_is_accepted_exactly_when_it_has_the_8_4_4_4_12_hex_shape(s in "[0-9a-fA-F-]{36}|\\PC{0,40}") {
            let shape = s.len() == 36
                && s.char_indices().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => c == '-',
                    _ => c.is_ascii_hexdigit(),
                });
            proptest::prop_assert_eq!(request_id(&s).is_some(), shape, "{:?}", s);
        }
    }
}
