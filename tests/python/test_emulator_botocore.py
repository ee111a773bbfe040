"""The chime-emulator binary against an independent client: botocore's own `chime` client.

Run by .ci/run; locally: CHIME_EMULATOR_BIN=target/debug/chime-emulator pytest tests/python
"""

import json
import os
import subprocess
import urllib.request
import uuid

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

DEMO_ACCOUNT = "12a3456b-7c89-012d-3456-78901e23fg45"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
BINARY = os.environ.get("CHIME_EMULATOR_BIN", "target/debug/chime-emulator")


def start_emulator(**env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHIME_"))}
    full_env.update({"CHIME_EMULATOR_LISTEN": "127.0.0.1:0", **env})
    proc = subprocess.Popen([BINARY], stdout=subprocess.PIPE, env=full_env, text=True)
    line = proc.stdout.readline()
    assert "listening on " in line, line
    return proc, line.split("listening on ", 1)[1].strip()


@pytest.fixture(scope="module")
def endpoint():
    proc, url = start_emulator()
    yield url
    proc.terminate()
    assert proc.wait(timeout=10) == 0


def client(url, secret=SECRET):
    return botocore.session.get_session().create_client(
        "chime",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
    )


def error_of(excinfo):
    err = excinfo.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_create_user_succeeds_with_aws_shapes(endpoint):
    email = f"{uuid.uuid4().hex}@example.com"
    out = client(endpoint).create_user(AccountId=DEMO_ACCOUNT, Email=email, UserType="PrivateUser")
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert len(out["ResponseMetadata"]["RequestId"]) == 36
    user = out["User"]
    assert user["PrimaryEmail"] == email
    assert user["AccountId"] == DEMO_ACCOUNT
    assert user["UserRegistrationStatus"] == "Unregistered"
    assert user["UserInvitationStatus"] == "Pending"
    assert user["InvitedOn"].microsecond % 1000 == 0
    assert "RegisteredOn" not in user


def test_the_standard_endpoint_variable_points_botocore_at_it(endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_CHIME", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    c = botocore.session.get_session().create_client("chime", region_name="us-east-1")
    assert c.meta.endpoint_url == endpoint
    user = c.create_user(AccountId=DEMO_ACCOUNT, Username="env")["User"]
    assert user["DisplayName"] == "env"


def test_shared_device_is_registered(endpoint):
    user = client(endpoint).create_user(AccountId=DEMO_ACCOUNT, UserType="SharedDevice")["User"]
    assert user["UserRegistrationStatus"] == "Registered"
    assert "RegisteredOn" in user


def test_duplicate_email_is_a_conflict(endpoint):
    c = client(endpoint)
    email = f"{uuid.uuid4().hex}@example.com"
    c.create_user(AccountId=DEMO_ACCOUNT, Email=email)
    with pytest.raises(c.exceptions.ConflictException) as excinfo:
        c.create_user(AccountId=DEMO_ACCOUNT, Email=email)
    assert error_of(excinfo) == ("ConflictException", 409)


def test_unknown_account_is_not_found(endpoint):
    c = client(endpoint)
    with pytest.raises(c.exceptions.NotFoundException) as excinfo:
        c.create_user(AccountId="no-such-account", Email="a@example.com")
    assert error_of(excinfo) == ("NotFoundException", 404)


def test_bad_email_pattern_is_a_bad_request(endpoint):
    c = client(endpoint)
    with pytest.raises(c.exceptions.BadRequestException) as excinfo:
        c.create_user(AccountId=DEMO_ACCOUNT, Email="not-an-email")
    assert error_of(excinfo) == ("BadRequestException", 400)


def test_wrong_secret_is_rejected_as_a_bad_signature(endpoint):
    with pytest.raises(ClientError) as excinfo:
        client(endpoint, secret="wrong").create_user(AccountId=DEMO_ACCOUNT)
    assert error_of(excinfo) == ("InvalidSignatureException", 403)
    assert "signature" in excinfo.value.response["Error"]["Message"]


def test_throttling_answers_429_throttled_client():
    proc, url = start_emulator(CHIME_EMULATOR_THROTTLE_RPS="1")
    try:
        c = client(url)
        c.create_user(AccountId=DEMO_ACCOUNT)
        with pytest.raises(c.exceptions.ThrottledClientException) as excinfo:
            c.create_user(AccountId=DEMO_ACCOUNT)
        assert error_of(excinfo) == ("ThrottledClientException", 429)
        assert excinfo.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def admin(url, path, body):
    request = urllib.request.Request(
        f"{url}/_emulator/{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 204


def fresh_account(url):
    account = str(uuid.uuid4())
    admin(url, "accounts", {"account_id": account})
    return account


def test_list_users_finds_a_user_by_email_as_create_user_described_it(endpoint):
    c = client(endpoint)
    account = fresh_account(endpoint)
    created = c.create_user(AccountId=account, Email="Jane@Example.com", Username="jane")["User"]
    out = c.list_users(AccountId=account, UserEmail="jane@example.com")
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert len(out["ResponseMetadata"]["RequestId"]) == 36
    assert out["Users"] == [created]
    assert "NextToken" not in out
    assert c.list_users(AccountId=account, UserEmail="nobody@example.com")["Users"] == []


def test_list_users_pages_with_next_token_and_filters_by_type(endpoint):
    c = client(endpoint)
    account = fresh_account(endpoint)
    for i in range(5):
        c.create_user(AccountId=account, Email=f"u{i}@example.com",
                      UserType="SharedDevice" if i % 2 else "PrivateUser")
    emails, kwargs = [], {}
    while True:
        page = c.list_users(AccountId=account, MaxResults=2, **kwargs)
        assert len(page["Users"]) <= 2
        emails += [u["PrimaryEmail"] for u in page["Users"]]
        if "NextToken" not in page:
            break
        kwargs = {"NextToken": page["NextToken"]}
    assert emails == [f"u{i}@example.com" for i in range(5)]
    devices = c.list_users(AccountId=account, UserType="SharedDevice")["Users"]
    assert [u["PrimaryEmail"] for u in devices] == ["u1@example.com", "u3@example.com"]


def test_list_users_refuses_a_page_size_over_200_and_unknown_accounts(endpoint):
    c = client(endpoint)
    with pytest.raises(c.exceptions.BadRequestException) as excinfo:
        c.list_users(AccountId=DEMO_ACCOUNT, MaxResults=201)
    assert error_of(excinfo) == ("BadRequestException", 400)
    with pytest.raises(c.exceptions.NotFoundException) as excinfo:
        c.list_users(AccountId="no-such-account")
    assert error_of(excinfo) == ("NotFoundException", 404)


def test_a_lost_answer_leaves_a_user_that_list_users_finds(endpoint):
    c = client(endpoint)
    account = fresh_account(endpoint)
    admin(endpoint, "faults", {"fault": {"kind": "commit_then_error", "status": 500,
                                         "error_type": "ServiceFailureException"}})
    with pytest.raises(c.exceptions.ServiceFailureException) as excinfo:
        c.create_user(AccountId=account, Email="lost@example.com")
    assert error_of(excinfo) == ("ServiceFailureException", 500)
    users = c.list_users(AccountId=account, UserEmail="lost@example.com")["Users"]
    assert [u["PrimaryEmail"] for u in users] == ["lost@example.com"]
