//! The API reference's sample response, byte for byte as published, through the real SDK
//! deserializer and the gateway's translation, answered in memory (no sockets).

use aws_credential_types::Credentials;
use aws_sdk_chime::config::{BehaviorVersion, Region};
use aws_smithy_http_client::test_util::infallible_client_fn;
use chime_gateway::{
    chime::SdkUpstream,
    pb::chime::v1::{
        AlexaForBusinessMetadata, CreateUserRequest, LicenseType, User, UserInvitationStatus,
        UserRegistrationStatus, UserType, chime_service_server::ChimeService,
    },
    service::{Backoff, CallPolicy, ChimeGateway, REPLAYED_KEY},
};
use std::time::Duration;

const SAMPLE: &str = include_str!("fixtures/create_user_sample_response.json");

fn gateway_answering_the_sample() -> ChimeGateway<SdkUpstream> {
    let http = infallible_client_fn(|_request| {
        http::Response::builder()
            .status(201)
            .header("x-amzn-RequestId", "4225c49a-307a-413b-bc8f-37bb145c1483")
            .header("Content-Type", "application/json")
            .header("Date", "Wed, 15 Jan 2020 22:38:09 GMT")
            .header("Connection", "keep-alive")
            .body(SAMPLE)
            .unwrap()
    });
    let config = aws_sdk_chime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::from_static("us-east-1"))
        .credentials_provider(Credentials::for_tests())
        .http_client(http);
    let policy = CallPolicy {
        upstream_timeout: Duration::from_secs(5),
        default_deadline: Duration::from_secs(5),
        max_attempts: 1,
        backoff: Backoff::default(),
        reconcile: true,
    };
    ChimeGateway::new(SdkUpstream::from_builder(config), policy, 8)
}

#[test]
fn the_fixture_is_the_published_body() {
    assert!(SAMPLE.starts_with(r#"{"User":{"AccountId":"12a3456b-7c89-012d-3456-78901e23fg45""#));
    assert!(SAMPLE.contains(r#""Delegates":null"#) && SAMPLE.contains(r#""EmailAlias":[]"#));
    assert!(SAMPLE.ends_with(r#""Vanity":null}}"#));
}

/// Without a request id; with one (the answer kept, and sent, as its encoding); and the repeat
/// of that id, answered with the kept bytes.
#[tokio::test]
async fn the_sample_response_translates_to_the_expected_user() {
    let gateway = gateway_answering_the_sample();
    let id = "8a5c1e1b-1f0e-4c3d-9b5a-6d2e7f801234";
    for (request_id, replayed) in [("", false), (id, false), (id, true)] {
        let request = CreateUserRequest {
            account_id: "12a3456b-7c89-012d-3456-78901e23fg45".into(),
            email: Some("room@example.com".into()),
            username: None,
            user_type: UserType::SharedDevice as i32,
            request_id: request_id.into(),
        };
        let response = gateway.create_user(tonic::Request::new(request)).await.unwrap();
        assert_eq!(
            response.metadata().get("x-amzn-requestid").unwrap(),
            "4225c49a-307a-413b-bc8f-37bb145c1483"
        );
        let flag = response.metadata().get(REPLAYED_KEY);
        assert_eq!(flag.is_some(), replayed, "{request_id:?}");
        assert_eq!(response.into_inner().user, Some(expected()));
    }
}

fn expected() -> User {
    User {
        user_id: "1ab2345c-67de-8901-f23g-45h678901j2k".into(),
        account_id: Some("12a3456b-7c89-012d-3456-78901e23fg45".into()),
        primary_email: Some(String::new()),
        primary_provisioned_number: None,
        display_name: Some("room device".into()),
        license_type: LicenseType::Pro as i32,
        user_type: UserType::SharedDevice as i32,
        user_registration_status: UserRegistrationStatus::Registered as i32,
        user_invitation_status: UserInvitationStatus::Unspecified as i32,
        registered_on: Some(prost_types::Timestamp {
            seconds: 1_579_127_889,
            nanos: 806_000_000,
        }),
        invited_on: None,
        alexa_for_business_metadata: Some(AlexaForBusinessMetadata {
            is_alexa_for_business_enabled: Some(false),
            alexa_for_business_room_arn: None,
        }),
        personal_pin: None,
    }
}
