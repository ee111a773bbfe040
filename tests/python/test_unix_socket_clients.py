"""gRPC clients with their defaults against `chime-gateway --listen unix:...`: grpcio (which sends
the socket's path as :authority), and a raw HTTP/2 client (the `h2` package) sending the path raw,
percent-encoded, empty, and `localhost`, two calls on one connection each.

Run by scripts/test; locally: CHIME_GATEWAY_BIN=target/debug/chime-gateway pytest tests/python
"""

import importlib
import os
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
import uuid

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from grpc_tools import protoc

BINARY = os.environ.get("CHIME_GATEWAY_BIN", "target/debug/chime-gateway")
PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"
DEMO_ACCOUNT = "12a3456b-7c89-012d-3456-78901e23fg45"
METHOD = b"/chime.v1.ChimeService/CreateUser"


@pytest.fixture(scope="module")
def stubs():
    out = tempfile.mkdtemp(prefix="chime-stubs-")
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    assert protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out}",
                        f"--grpc_python_out={out}", str(PROTO_ROOT / "chime" / "v1" / "chime.proto")]) == 0
    sys.path.insert(0, out)
    return importlib.import_module("chime.v1.chime_pb2"), importlib.import_module("chime.v1.chime_pb2_grpc")


@pytest.fixture(scope="module")
def socket_path():
    path = os.path.join(tempfile.mkdtemp(prefix="chime-sock-"), "grpc.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHIME_"))}
    proc = subprocess.Popen([BINARY, "--emulate", "--listen", f"unix:{path}", "--metrics-listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    for line in proc.stdout:
        if "serving chime.v1.ChimeService on" in line:
            break
    else:
        pytest.fail("the gateway did not start")
    yield path
    proc.terminate()
    assert proc.wait(timeout=10) == 0


def create_request(pb):
    return pb.CreateUserRequest(account_id=DEMO_ACCOUNT, email=f"unix-{uuid.uuid4().hex[:12]}@example.com",
                                user_type=pb.USER_TYPE_PRIVATE_USER, request_id=str(uuid.uuid4()))


def test_grpcio_with_its_defaults_is_served(stubs, socket_path):
    pb, rpc = stubs
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        client = rpc.ChimeServiceStub(channel)
        for _ in range(2):
            request = create_request(pb)
            response = client.CreateUser(request, timeout=5.0)
            assert response.user.primary_email == request.email and response.user.user_id


def raw_calls(pb, socket_path, authority, calls=2):
    """`calls` CreateUser calls on one HTTP/2 connection, each with `authority`: their grpc-status."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                       validate_outbound_headers=False, normalize_outbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(socket_path)
    conn.initiate_connection()
    statuses = {}
    for _ in range(calls):
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", METHOD),
                                   (b":authority", authority), (b"content-type", b"application/grpc"),
                                   (b"te", b"trailers")])
        message = create_request(pb).SerializeToString()
        conn.send_data(stream, struct.pack(">BI", 0, len(message)) + message, end_stream=True)
        statuses[stream] = None
    sock.sendall(conn.data_to_send())
    while any(v is None for v in statuses.values()):
        data = sock.recv(65536)
        assert data, "the gateway closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                status = dict(event.headers).get(b"grpc-status")
                if status is not None:
                    statuses[event.stream_id] = int(status)
            elif isinstance(event, h2.events.StreamReset):
                statuses[event.stream_id] = f"reset {event.error_code!r}"
        sock.sendall(conn.data_to_send())
    sock.close()
    return list(statuses.values())


@pytest.mark.parametrize("authority", [
    b"/tmp/chime/grpc.sock",
    b"%2Ftmp%2Fchime%2Fgrpc.sock",
    b"",
    b"localhost",
])
def test_a_raw_http2_client_is_served_whatever_its_authority(stubs, socket_path, authority):
    pb, _ = stubs
    path_as_sent = authority.replace(b"/tmp/chime/grpc.sock", socket_path.encode())
    assert raw_calls(pb, socket_path, path_as_sent) == [0, 0]
