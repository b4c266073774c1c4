"""Settings: a missing or malformed variable fails with a ConfigError naming it (never its value);
AWS_ENDPOINT_URL reaches both the pynamodb models and boto3 clients."""

from __future__ import annotations

import boto3
import pytest

from playvault import store
from playvault.config import (
    AuthSettings,
    ConfigError,
    DispatcherSettings,
    SpotifySettings,
    TableSettings,
    WorkerSettings,
)
from playvault.store import users
from playvault_local import provision as prov
from tests.conftest import stack_on_server

TABLES = {
    "USERS_TABLE": "t-users",
    "ARTISTS_TABLE": "t-artists",
    "ALBUMS_TABLE": "t-albums",
    "TRACKS_TABLE": "t-tracks",
    "PLAYS_TABLE": "t-plays",
    "STATE_TABLE": "t-state",
    "GAPS_TABLE": "t-gaps",
    "EPISODES_TABLE": "t-episodes",
    "ROLLUPS_TABLE": "t-rollups",
}
SPOTIFY = {"SPOTIFY_CLIENT_ID_PARAM": "/playvault/client-id", "SPOTIFY_CLIENT_SECRET_PARAM": "/playvault/secret"}
WORKER = {**TABLES, **SPOTIFY, "TOKEN_KEY_ID": "arn:aws:kms:us-east-1:1:key/k", "WORK_QUEUE_URL": "http://q",
          "DEAD_LETTER_QUEUE_URL": "http://dlq", "IDEMPOTENCY_TABLE": "t-idem"}
AUTH = {**TABLES, **SPOTIFY, "TOKEN_KEY_ID": "k", "MAX_USERS": "5", "REDIRECT_URI": "https://pv.example/cb",
        "SESSIONS_TABLE": "t-sessions"}


def test_complete_environment_is_read():
    settings = WorkerSettings.from_env({**WORKER, "USER_CONCURRENCY": "8", "UNRELATED": "x"})
    assert settings.users_table == "t-users" and settings.user_concurrency == 8
    assert settings.spotify_api_url == "https://api.spotify.com/v1"
    assert AuthSettings.from_env(AUTH).max_users == 5


@pytest.mark.parametrize("missing", sorted(TABLES))
def test_missing_table_names_the_variable(missing):
    env = {k: v for k, v in TABLES.items() if k != missing}
    with pytest.raises(ConfigError) as caught:
        TableSettings.from_env(env)
    message = str(caught.value)
    assert missing in message
    assert not any(value in message for value in env.values())


def test_every_missing_variable_is_named_at_once():
    with pytest.raises(ConfigError) as caught:
        WorkerSettings.from_env({})
    for name in (*TABLES, *SPOTIFY, "TOKEN_KEY_ID", "WORK_QUEUE_URL", "IDEMPOTENCY_TABLE"):
        assert name in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "base", "name", "secret_value"),
    [
        (SpotifySettings, SPOTIFY, "SPOTIFY_API_URL", "ftp://hunter2.example/v1"),
        (SpotifySettings, SPOTIFY, "SPOTIFY_ACCOUNTS_URL", "hunter2-not-a-url"),
        (SpotifySettings, SPOTIFY, "SPOTIFY_CLIENT_SECRET_PARAM", "hunter2 the secret itself"),
        (WorkerSettings, WORKER, "USER_CONCURRENCY", "hunter2"),
        (WorkerSettings, WORKER, "USER_CONCURRENCY", "6400"),
        (WorkerSettings, WORKER, "MIN_REMAINING_MS", "-hunter2"),
        (DispatcherSettings, {**TABLES, "WORK_QUEUE_URL": "q"}, "BATCH_SIZE", "0"),
        (AuthSettings, AUTH, "REDIRECT_URI", "http://hunter2.example/cb"),
        (AuthSettings, AUTH, "MAX_USERS", "hunter2"),
        (TableSettings, TABLES, "PLAYS_TABLE", "h2"),
    ],
)
def test_malformed_setting_names_the_variable_not_the_value(settings, base, name, secret_value):
    with pytest.raises(ConfigError) as caught:
        settings.from_env({**base, name: secret_value})
    message = str(caught.value)
    assert name in message
    assert secret_value not in message
    assert "hunter2" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained echo


def test_settings_read_os_environ_by_default(monkeypatch):
    for key, value in TABLES.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("STATE_TABLE")
    with pytest.raises(ConfigError, match="STATE_TABLE"):
        TableSettings.from_env()


# ---------------------------------------------------------------- AWS_ENDPOINT_URL
@pytest.fixture
def moto_endpoint(moto_reset, monkeypatch) -> prov.Stack:
    with stack_on_server(moto_reset, "http://127.0.0.1:9", monkeypatch) as stack:  # no Spotify needed
        yield stack


def test_aws_endpoint_url_reaches_boto3_clients(moto_endpoint, moto_reset):
    for service in ("dynamodb", "kms", "sqs", "ssm"):
        assert boto3.client(service).meta.endpoint_url == moto_reset


def test_aws_endpoint_url_reaches_the_pynamodb_models(moto_endpoint, moto_reset):
    connection = users.UserModel._get_connection().connection
    assert connection.client.meta.endpoint_url == moto_reset
    users.UserModel("endpoint-check", display_name="E").save()
    # The item is in moto_server: read it back with a client aimed there explicitly.
    ddb = boto3.client("dynamodb", endpoint_url=moto_reset, region_name=prov.LOCAL_REGION)
    item = ddb.get_item(TableName=moto_endpoint.name("UsersTable"), Key={"user_id": {"S": "endpoint-check"}})
    assert item["Item"]["display_name"] == {"S": "E"}


def test_bind_points_models_at_the_environments_tables(moto_endpoint):
    for settings_field, model in store.ALL_MODELS.items():
        if settings_field in TableSettings.model_fields:
            assert model.Meta.table_name == getattr(TableSettings.from_env(), settings_field)
    assert users.UserModel.Meta.table_name == moto_endpoint.name("UsersTable")
