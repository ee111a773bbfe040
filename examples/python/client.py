#!/usr/bin/env python3
"""Calling chime-gateway from Python: create a user with a request id and a deadline, retry it
safely, and read the rich error of a duplicate.

    pip install -r requirements.txt
    python client.py --target 127.0.0.1:50051
    python client.py --target unix:/var/run/chime-gateway/grpc.sock   # a gateway on a Unix socket

Stubs are generated from ../../proto at start (grpcio-tools), so nothing generated is committed.
"""

import argparse
import importlib
import pathlib
import sys
import tempfile
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"
DEMO_ACCOUNT = "12a3456b-7c89-012d-3456-78901e23fg45"


def load_stubs():
    out = tempfile.mkdtemp(prefix="chime-stubs-")
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / "chime" / "v1" / "chime.proto"),
    ])
    if code != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return importlib.import_module("chime.v1.chime_pb2"), importlib.import_module("chime.v1.chime_pb2_grpc")


def rich_error(err: grpc.RpcError) -> dict:
    """The google.rpc details the gateway attaches to every error."""
    found = {"code": err.code().name, "message": err.details()}
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.RequestInfo,
                     error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                msg = kind()
                detail.Unpack(msg)
                found[kind.DESCRIPTOR.name] = msg
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT or unix:/path/to/socket")
    parser.add_argument("--account", default=DEMO_ACCOUNT)
    args = parser.parse_args()
    pb, rpc = load_stubs()
    # Defaults alone, over TCP and over a Unix socket (unix:/path).
    with grpc.insecure_channel(args.target) as channel:
        client = rpc.ChimeServiceStub(channel)
        email = f"py-{uuid.uuid4().hex[:12]}@example.com"
        # A new request id per user to create, sent again unchanged with every retry of it.
        request = pb.CreateUserRequest(account_id=args.account, email=email,
                                       user_type=pb.USER_TYPE_PRIVATE_USER, request_id=str(uuid.uuid4()))

        # Always set a deadline: the gateway bounds its upstream attempts by it.
        response, call = client.CreateUser.with_call(request, timeout=5.0)
        request_id = dict(call.initial_metadata()).get("x-amzn-requestid")
        user = response.user
        print(f"created {user.user_id} ({pb.UserRegistrationStatus.Name(user.user_registration_status)}, "
              f"{pb.UserInvitationStatus.Name(user.user_invitation_status)}), request id {request_id}")
        assert user.primary_email == email and user.user_id, user

        # A retry with the same request id (after a timeout, say) gets the same user, not a conflict.
        # It says it is a retry, so that a gateway that never saw the first call (restarted, or
        # another pod's) still settles a conflict by looking the user up.
        retry = [("x-chime-gateway-previous-attempts", "1")]
        again, call = client.CreateUser.with_call(request, timeout=5.0, metadata=retry)
        metadata = dict(call.initial_metadata())
        print(f"retried: {again.user.user_id}, replayed={metadata.get('x-chime-gateway-replayed')}")
        assert again.user.user_id == user.user_id and metadata.get("x-chime-gateway-replayed") == "true"

        # Another create of the same email: ALREADY_EXISTS, with ErrorInfo (reason CONFLICT).
        duplicate = pb.CreateUserRequest(account_id=args.account, email=email, request_id=str(uuid.uuid4()))
        try:
            client.CreateUser(duplicate, timeout=5.0)
            sys.exit("expected ALREADY_EXISTS for a duplicate email")
        except grpc.RpcError as err:
            details = rich_error(err)
            info = details["ErrorInfo"]
            print(f"duplicate: {details['code']} reason={info.reason} domain={info.domain} "
                  f"http_status={info.metadata['http_status']}")
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS
            assert info.reason == "CONFLICT" and info.domain == "chime.amazonaws.com"
            if "RetryInfo" in details:  # only on retryable errors (THROTTLED, UNAVAILABLE)
                print(f"retry after {details['RetryInfo'].retry_delay.ToTimedelta()}")
    print("python example: OK")


if __name__ == "__main__":
    main()
