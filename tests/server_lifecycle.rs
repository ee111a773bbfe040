//! The server around the API: health, reflection, the concurrency limit and the shutdown sequence,
//! on real loopback sockets.

mod common;

use std::time::{Duration, Instant};

use chime_gateway::{emulator::Fault, pb::chime::v1::UserType, server::SERVICE_NAME};
use common::{Gateway, create, emulator, policy, request};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

async fn gateway_with(
    emu: &chime_gateway::emulator::Emulator,
    max_concurrency: usize,
    grace: Duration,
) -> Gateway {
    Gateway::start(common::upstream_for(emu).await, policy(), max_concurrency, grace).await
}

#[tokio::test]
async fn health_reports_serving_overall_and_for_the_service() {
    let emu = emulator().await;
    let gw = Gateway::in_front_of(&emu, policy()).await;
    let mut health = HealthClient::new(gw.channel().await);
    for service in ["", SERVICE_NAME] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let status = health.check(request).await.unwrap().into_inner().status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_v1_lists_and_describes_the_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let emu = emulator().await;
    let gw = Gateway::in_front_of(&emu, policy()).await;
    let mut client = ServerReflectionClient::new(gw.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol(SERVICE_NAME.into()),
        MessageRequest::FileByFilename("google/protobuf/timestamp.proto".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    for _ in 0..2 {
        let response = responses.next().await.unwrap().unwrap().message_response;
        assert!(
            matches!(response, Some(MessageResponse::FileDescriptorResponse(f)) if !f.file_descriptor_proto.is_empty())
        );
    }
}

#[tokio::test]
async fn reflection_v1alpha_is_served_too() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let emu = emulator().await;
    let gw = Gateway::in_front_of(&emu, policy()).await;
    let mut client = ServerReflectionClient::new(gw.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(SERVICE_NAME.into())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap().message_response;
    assert!(matches!(
        response,
        Some(MessageResponse::FileDescriptorResponse(_))
    ));
}

#[tokio::test]
async fn calls_past_the_concurrency_limit_get_unavailable_with_retry_info_at_once() {
    let emu = emulator().await;
    let gw = gateway_with(&emu, 2, Duration::from_secs(5)).await;
    emu.inject(Fault::Latency { millis: 600 }, 2);
    let client = gw.client().await;
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                c.create_user(request(Some(&format!("u{i}@example.com")), UserType::PrivateUser))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let refused = client
        .clone()
        .create_user(request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "refused at once, not queued"
    );
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        refused.get_error_details().error_info().unwrap().reason,
        "OVERLOADED"
    );
    assert!(refused.get_error_details().retry_info().is_some());
    for call in slow {
        call.await.unwrap().unwrap();
    }
    create(&gw, request(None, UserType::Unspecified))
        .await
        .expect("recovers when load drops");
}

#[tokio::test]
async fn shutdown_reports_not_serving_and_finishes_in_flight_calls() {
    let emu = emulator().await;
    let mut gw = gateway_with(&emu, 8, Duration::from_secs(5)).await;
    let mut watch = HealthClient::new(gw.channel().await)
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    emu.inject(Fault::Latency { millis: 500 }, 1);
    let client = gw.client().await;
    let in_flight = tokio::spawn(async move {
        let mut c = client;
        c.create_user(request(Some("late@example.com"), UserType::PrivateUser))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.shutdown();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    drop(watch);
    in_flight.await.unwrap().expect("the in-flight call completes");
    let finished = tokio::time::timeout(Duration::from_secs(3), &mut gw.task).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "{finished:?}");
}

#[tokio::test]
async fn shutdown_cancels_what_is_left_when_the_grace_elapses() {
    let emu = emulator().await;
    let mut gw = gateway_with(&emu, 8, Duration::from_millis(200)).await;
    emu.inject(Fault::Latency { millis: 10_000 }, 1);
    let client = gw.client().await;
    let in_flight = tokio::spawn(async move {
        let mut c = client;
        c.create_user(request(None, UserType::Unspecified)).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    gw.shutdown();
    let finished = tokio::time::timeout(Duration::from_secs(3), &mut gw.task).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "{finished:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let cancelled = in_flight.await.unwrap().unwrap_err();
    assert_eq!(cancelled.code(), Code::Unavailable, "{cancelled:?}");
    assert_eq!(
        cancelled.get_error_details().error_info().unwrap().reason,
        "SHUTTING_DOWN"
    );
}
