"""Configuration: documented defaults, and one clear line naming any bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenward.errors import ConfigError
from tokenward.settings import Settings, load_settings


@pytest.fixture
def no_dotenv(tmp_path: Path) -> Path:
    return tmp_path / "absent.env"


def _load(env: dict[str, str], env_file: Path) -> Settings:
    return load_settings(env, env_file=env_file)


def _config_error(env: dict[str, str], env_file: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(env, env_file)
    line = caught.value.detail
    assert "\n" not in line, f"not one line: {line!r}"
    return line


def test_defaults_match_the_contract(no_dotenv: Path) -> None:
    """With no variables the documented defaults apply, and no secret is set."""
    s = _load({}, no_dotenv)
    assert s.data_dir == Path("./.tokenward")
    assert s.redis_url is None
    assert s.database_url is None
    assert s.issuer is None
    assert s.audience == "tokenward"
    assert (s.access_ttl, s.session_idle_ttl, s.session_max_ttl) == (600, 2_592_000, 7_776_000)
    assert (s.refresh_grace, s.leeway, s.password_min_length) == (10, 30, 12)
    assert s.cookie_secure is True
    assert s.transparent_refresh is False
    assert s.signing_keys is None
    assert s.signing_alg == "EdDSA"
    assert s.trusted_proxies == ()
    assert s.max_sessions == 100


def test_no_setting_holds_a_default_secret() -> None:
    """No field's default is key material or a password (keys are generated per deployment)."""
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, str):
            assert len(default) < 16, f"{name} has a suspicious default {default!r}"
    assert Settings.model_fields["signing_keys"].default is None


def test_resolved_fills_issuer_and_allowed_origins(no_dotenv: Path) -> None:
    """An unset issuer becomes http://host:port, and the allowed origin follows it."""
    s = _load({}, no_dotenv).resolved(host="127.0.0.1", port=8123)
    assert s.effective_issuer == "http://127.0.0.1:8123"
    assert "http://127.0.0.1:8123" in s.allowed_origins
    public = _load({}, no_dotenv).resolved(host="auth.example.com", port=8080)
    assert public.allowed_origins == ("http://auth.example.com:8080",)


def test_issuer_sets_the_allowed_origin(no_dotenv: Path) -> None:
    """Allowed origins default to the issuer's origin."""
    s = _load({"TOKENWARD_ISSUER": "https://Auth.Example.com/base/"}, no_dotenv)
    assert s.effective_issuer == "https://Auth.Example.com/base"
    assert s.allowed_origins == ("https://auth.example.com",)


@pytest.mark.parametrize(
    ("issuer", "origin"),
    [
        ("https://auth.example.com:443", "https://auth.example.com"),
        ("http://auth.example.com:80/x", "http://auth.example.com"),
        ("https://auth.example.com:8443", "https://auth.example.com:8443"),
    ],
)
def test_allowed_origin_is_written_as_browsers_send_it(
    no_dotenv: Path, issuer: str, origin: str
) -> None:
    """Browsers omit a default port in ``Origin``, so the allowed origin must omit it too."""
    assert _load({"TOKENWARD_ISSUER": issuer}, no_dotenv).allowed_origins == (origin,)
    listed = _load({"TOKENWARD_ALLOWED_ORIGINS": issuer}, no_dotenv)
    assert listed.allowed_origins == (origin,)


def test_lists_are_comma_separated(no_dotenv: Path) -> None:
    """List settings split on commas, blanks dropped."""
    s = _load(
        {
            "TOKENWARD_ALLOWED_ORIGINS": "https://a.test, https://b.test:8443,,",
            "TOKENWARD_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1 ,::1",
        },
        no_dotenv,
    )
    assert s.allowed_origins == ("https://a.test", "https://b.test:8443")
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.1", "::1")


def test_refresh_grace_zero_is_valid(no_dotenv: Path) -> None:
    """Strict mode: TOKENWARD_REFRESH_GRACE=0 is accepted."""
    assert _load({"TOKENWARD_REFRESH_GRACE": "0"}, no_dotenv).refresh_grace == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@cache.example:6380/1",
        "unix:///run/redis.sock",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
        "redis+cluster://node1:7000",
    ],
)
def test_accepted_redis_urls(no_dotenv: Path, url: str) -> None:
    """Standalone, TLS, unix socket, Sentinel and Cluster URLs are accepted."""
    assert _load({"TOKENWARD_REDIS_URL": url}, no_dotenv).redis_url == url


def test_plain_postgres_url_gets_the_async_driver(no_dotenv: Path) -> None:
    """``postgresql://`` is accepted and run with asyncpg."""
    s = _load({"TOKENWARD_DATABASE_URL": "postgresql://u:p@db:5432/app"}, no_dotenv)
    assert s.database_url == "postgresql+asyncpg://u:p@db:5432/app"


@pytest.mark.parametrize(
    "name",
    ["TOKENWARD_ACESS_TTL", "TOKENWARD_SECRET_KEY", "tokenward_redis", "TOKENWARD_"],
)
def test_unknown_variable_is_named(no_dotenv: Path, name: str) -> None:
    """An unknown TOKENWARD_ variable (a typo) stops start-up and is named."""
    line = _config_error({name: "x"}, no_dotenv)
    assert line.startswith(name)
    assert "unknown" in line


def test_unknown_variable_in_dotenv_is_named(tmp_path: Path) -> None:
    """The .env file is checked like the environment."""
    env_file = tmp_path / ".env"
    env_file.write_text("TOKENWARD_ACCESS_TTL=60\nTOKENWARD_COOKIES_SECURE=false\n")
    assert _config_error({}, env_file).startswith("TOKENWARD_COOKIES_SECURE")


def test_dotenv_values_are_read_and_environment_wins(tmp_path: Path) -> None:
    """Values come from .env too; the real environment overrides them."""
    env_file = tmp_path / ".env"
    env_file.write_text("TOKENWARD_ACCESS_TTL=60\nTOKENWARD_LEEWAY=5\n")
    s = _load({"TOKENWARD_LEEWAY": "7"}, env_file)
    assert (s.access_ttl, s.leeway) == (60, 7)


def test_unrelated_variables_are_ignored(no_dotenv: Path) -> None:
    """Only the TOKENWARD_ prefix is ours."""
    assert _load({"PATH": "/bin", "TOKEN_WARD": "x", "REDIS_URL": "?"}, no_dotenv)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENWARD_REDIS_URL", "http://cache:6379"),
        ("TOKENWARD_REDIS_URL", "redis://"),
        ("TOKENWARD_REDIS_URL", "localhost:6379"),
        ("TOKENWARD_REDIS_URL", "unix://"),
        ("TOKENWARD_REDIS_URL", ""),
        ("TOKENWARD_DATABASE_URL", "not a url"),
        ("TOKENWARD_DATABASE_URL", "mysql://u@h/db"),
        ("TOKENWARD_DATABASE_URL", "postgresql+psycopg2://u@h/db"),
        ("TOKENWARD_ISSUER", "auth.example.com"),
        ("TOKENWARD_ISSUER", "ftp://auth.example.com"),
        ("TOKENWARD_ALLOWED_ORIGINS", "https://ok.test,javascript:alert(1)"),
    ],
)
def test_malformed_url_is_named(no_dotenv: Path, name: str, value: str) -> None:
    """A malformed URL stops start-up with one line naming the variable."""
    assert _config_error({name: value}, no_dotenv).startswith(name + ":")


@pytest.mark.parametrize(
    "name",
    [
        "TOKENWARD_ACCESS_TTL",
        "TOKENWARD_SESSION_IDLE_TTL",
        "TOKENWARD_SESSION_MAX_TTL",
        "TOKENWARD_MAX_SESSIONS",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1", "ten", "1.5", ""])
def test_lifetime_must_be_a_positive_integer(no_dotenv: Path, name: str, value: str) -> None:
    """TTLs <= 0 (or not integers) are refused: there is no "forever"."""
    assert _config_error({name: value}, no_dotenv).startswith(name + ":")


@pytest.mark.parametrize(
    ("name", "value"), [("TOKENWARD_REFRESH_GRACE", "-1"), ("TOKENWARD_LEEWAY", "-5")]
)
def test_negative_durations_are_refused(no_dotenv: Path, name: str, value: str) -> None:
    """Grace and leeway may be 0, never negative."""
    assert _config_error({name: value}, no_dotenv).startswith(name + ":")


def test_idle_timeout_longer_than_absolute_limit_is_refused(no_dotenv: Path) -> None:
    """An idle timeout past the absolute limit is a contradiction, named."""
    env = {"TOKENWARD_SESSION_IDLE_TTL": "100", "TOKENWARD_SESSION_MAX_TTL": "50"}
    assert _config_error(env, no_dotenv).startswith("TOKENWARD_SESSION_IDLE_TTL")


@pytest.mark.parametrize("name", ["TOKENWARD_COOKIE_SECURE", "TOKENWARD_TRANSPARENT_REFRESH"])
@pytest.mark.parametrize("value", ["maybe", "2", "yes please", ""])
def test_bad_boolean_is_named(no_dotenv: Path, name: str, value: str) -> None:
    """A boolean that is not one is refused, not read as true or false."""
    assert _config_error({name: value}, no_dotenv).startswith(name + ":")


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("0", False), ("TRUE", True)])
def test_booleans_parse(no_dotenv: Path, value: str, expected: bool) -> None:
    """The usual spellings of booleans work."""
    assert _load({"TOKENWARD_COOKIE_SECURE": value}, no_dotenv).cookie_secure is expected


@pytest.mark.parametrize(
    "value", ["10.0.0.300", "proxy.internal", "10.0.0.0/33", "1.2.3.4,nope", "::g"]
)
def test_bad_trusted_proxies_are_named(no_dotenv: Path, value: str) -> None:
    """Trusted proxies must be IP addresses or networks."""
    line = _config_error({"TOKENWARD_TRUSTED_PROXIES": value}, no_dotenv)
    assert line.startswith("TOKENWARD_TRUSTED_PROXIES:")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENWARD_SIGNING_ALG", "HS256"),
        ("TOKENWARD_SIGNING_ALG", "none"),
        ("TOKENWARD_AUDIENCE", ""),
        ("TOKENWARD_PASSWORD_MIN_LENGTH", "4"),
        ("TOKENWARD_ARGON2_MEMORY_KIB", "1024"),
    ],
)
def test_unsafe_choices_are_refused(no_dotenv: Path, name: str, value: str) -> None:
    """Symmetric signing, an empty audience and weak password settings are refused."""
    assert _config_error({name: value}, no_dotenv).startswith(name + ":")


def test_error_does_not_echo_a_secret_value(no_dotenv: Path) -> None:
    """A bad database URL's password is not printed back."""
    line = _config_error(
        {"TOKENWARD_DATABASE_URL": "mysql://admin:hunter2-s3cret@db/app"}, no_dotenv
    )
    assert "hunter2-s3cret" not in line


def test_settings_are_frozen(no_dotenv: Path) -> None:
    """The settings object cannot be changed after validation."""
    s = _load({}, no_dotenv)
    with pytest.raises(Exception, match="frozen"):
        s.access_ttl = 1  # type: ignore[misc]
