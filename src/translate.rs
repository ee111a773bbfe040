//! Converts between the proto messages and the AWS SDK's CreateUser shapes, field by field.
//!
//! Presence is kept both ways: an unset proto field is not sent upstream, and an absent or `null`
//! upstream field stays unset. Enum values this proto does not know become `*_UNSPECIFIED`. Owns no
//! I/O and never logs.

use aws_sdk_chime::{
    operation::create_user::{CreateUserInput, CreateUserOutput},
    types as sdk,
};
use aws_smithy_types::DateTime;

use crate::pb::chime::v1 as pb;

/// Builds the SDK input from a request that has passed [`crate::validate::validate`].
pub fn to_input(request: pb::CreateUserRequest) -> CreateUserInput {
    let user_type = match pb::UserType::try_from(request.user_type) {
        Ok(pb::UserType::PrivateUser) => Some(sdk::UserType::PrivateUser),
        Ok(pb::UserType::SharedDevice) => Some(sdk::UserType::SharedDevice),
        Ok(pb::UserType::Unspecified) | Err(_) => None,
    };
    CreateUserInput::builder()
        .account_id(request.account_id)
        .set_email(request.email)
        .set_username(request.username)
        .set_user_type(user_type)
        .build()
        .expect("CreateUserInput has no required members at build time")
}

/// Builds the gRPC response from the SDK output.
pub fn from_output(output: CreateUserOutput) -> pb::CreateUserResponse {
    pb::CreateUserResponse {
        user: output.user.map(user),
    }
}

/// Builds the gRPC user from an SDK user (CreateUser's or ListUsers').
pub fn user(u: sdk::User) -> pb::User {
    pb::User {
        user_id: u.user_id,
        account_id: u.account_id,
        primary_email: u.primary_email,
        primary_provisioned_number: u.primary_provisioned_number,
        display_name: u.display_name,
        license_type: u.license_type.map_or(0, |v| license_type(&v) as i32),
        user_type: u.user_type.map_or(0, |v| user_type(&v) as i32),
        user_registration_status: u
            .user_registration_status
            .map_or(0, |v| registration_status(&v) as i32),
        user_invitation_status: u
            .user_invitation_status
            .map_or(0, |v| invitation_status(&v) as i32),
        registered_on: u.registered_on.map(timestamp),
        invited_on: u.invited_on.map(timestamp),
        alexa_for_business_metadata: u
            .alexa_for_business_metadata
            .map(|m| pb::AlexaForBusinessMetadata {
                is_alexa_for_business_enabled: m.is_alexa_for_business_enabled,
                alexa_for_business_room_arn: m.alexa_for_business_room_arn,
            }),
        personal_pin: u.personal_pin,
    }
}

fn license_type(v: &sdk::License) -> pb::LicenseType {
    match v {
        sdk::License::Basic => pb::LicenseType::Basic,
        sdk::License::Plus => pb::LicenseType::Plus,
        sdk::License::Pro => pb::LicenseType::Pro,
        sdk::License::ProTrial => pb::LicenseType::ProTrial,
        _ => pb::LicenseType::Unspecified,
    }
}

fn user_type(v: &sdk::UserType) -> pb::UserType {
    match v {
        sdk::UserType::PrivateUser => pb::UserType::PrivateUser,
        sdk::UserType::SharedDevice => pb::UserType::SharedDevice,
        _ => pb::UserType::Unspecified,
    }
}

fn registration_status(v: &sdk::RegistrationStatus) -> pb::UserRegistrationStatus {
    match v {
        sdk::RegistrationStatus::Unregistered => pb::UserRegistrationStatus::Unregistered,
        sdk::RegistrationStatus::Registered => pb::UserRegistrationStatus::Registered,
        sdk::RegistrationStatus::Suspended => pb::UserRegistrationStatus::Suspended,
        _ => pb::UserRegistrationStatus::Unspecified,
    }
}

fn invitation_status(v: &sdk::InviteStatus) -> pb::UserInvitationStatus {
    match v {
        sdk::InviteStatus::Pending => pb::UserInvitationStatus::Pending,
        sdk::InviteStatus::Accepted => pb::UserInvitationStatus::Accepted,
        sdk::InviteStatus::Failed => pb::UserInvitationStatus::Failed,
        _ => pb::UserInvitationStatus::Unspecified,
    }
}

fn timestamp(t: DateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.secs(),
        nanos: t.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(user_type: pb::UserType) -> pb::CreateUserRequest {
        pb::CreateUserRequest {
            account_id: "acct".into(),
            email: Some("jane@example.com".into()),
            username: None,
            user_type: user_type as i32,
            request_id: String::new(),
        }
    }

    #[test]
    fn unset_fields_stay_unset_in_the_input() {
        let input = to_input(request(pb::UserType::Unspecified));
        assert_eq!(input.account_id.as_deref(), Some("acct"));
        assert_eq!(input.email.as_deref(), Some("jane@example.com"));
        assert_eq!(input.username, None);
        assert_eq!(input.user_type, None);
    }

    #[test]
    fn user_types_map_to_the_sdk_values() {
        let private = to_input(request(pb::UserType::PrivateUser));
        assert_eq!(private.user_type, Some(sdk::UserType::PrivateUser));
        let shared = to_input(request(pb::UserType::SharedDevice));
        assert_eq!(shared.user_type, Some(sdk::UserType::SharedDevice));
    }

    #[test]
    fn unknown_enum_values_become_unspecified() {
        let u = sdk::User::builder()
            .user_id("u")
            .license_type(sdk::License::from("Enterprise"))
            .user_type(sdk::UserType::from("Robot"))
            .user_registration_status(sdk::RegistrationStatus::from("Frozen"))
            .user_invitation_status(sdk::InviteStatus::from("Bounced"))
            .build()
            .unwrap();
        let out = user(u);
        assert_eq!(out.license_type, 0);
        assert_eq!(out.user_type, 0);
        assert_eq!(out.user_registration_status, 0);
        assert_eq!(out.user_invitation_status, 0);
    }

    #[test]
    fn every_known_enum_value_maps_to_its_proto_value() {
        for (sdk, proto) in [
            (sdk::License::Basic, pb::LicenseType::Basic),
            (sdk::License::Plus, pb::LicenseType::Plus),
            (sdk::License::Pro, pb::LicenseType::Pro),
            (sdk::License::ProTrial, pb::LicenseType::ProTrial),
        ] {
            assert_eq!(license_type(&sdk), proto);
        }
        for (sdk, proto) in [
            (sdk::UserType::PrivateUser, pb::UserType::PrivateUser),
            (sdk::UserType::SharedDevice, pb::UserType::SharedDevice),
        ] {
            assert_eq!(user_type(&sdk), proto);
        }
        for (sdk, proto) in [
            (
                sdk::RegistrationStatus::Unregistered,
                pb::UserRegistrationStatus::Unregistered,
            ),
            (
                sdk::RegistrationStatus::Registered,
                pb::UserRegistrationStatus::Registered,
            ),
            (
                sdk::RegistrationStatus::Suspended,
                pb::UserRegistrationStatus::Suspended,
            ),
        ] {
            assert_eq!(registration_status(&sdk), proto);
        }
        for (sdk, proto) in [
            (sdk::InviteStatus::Pending, pb::UserInvitationStatus::Pending),
            (sdk::InviteStatus::Accepted, pb::UserInvitationStatus::Accepted),
            (sdk::InviteStatus::Failed, pb::UserInvitationStatus::Failed),
        ] {
            assert_eq!(invitation_status(&sdk), proto);
        }
    }

    #[test]
    fn a_missing_user_stays_missing() {
        assert_eq!(from_output(CreateUserOutput::builder().build()).user, None);
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        let t = DateTime::from_str(
            "2020-01-15T22:38:09.806Z",
            aws_smithy_types::date_time::Format::DateTime,
        )
        .unwrap();
        assert_eq!(
            timestamp(t),
            prost_types::Timestamp {
                seconds: 1_579_127_889,
                nanos: 806_000_000
            }
        );
    }
}
