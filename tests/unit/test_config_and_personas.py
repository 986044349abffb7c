"""Settings and personas: a bad value stops start-up with one line naming it."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from bots.bootstrap import SHIPPED_PERSONAS, load_personas
from core.config import Settings, load_settings
from core.errors import ConfigError
from core.personas import PersonaCatalogue, parse_persona
from tests.conftest import make_settings


def config_error(**values: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, **values)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_settings_are_named_in_one_line() -> None:
    assert config_error(PARLEY_CONTEXT_TOKENS=-5) == (
        "invalid setting PARLEY_CONTEXT_TOKENS: Input should be greater than 0 (got '-5')"
    )
    assert config_error(OPENAI_BASE_URL="not a url").startswith("invalid setting OPENAI_BASE_URL:")
    assert config_error(DATABASE_URL="mysql://x/y") == (
        "invalid setting DATABASE_URL: unsupported database 'mysql'; use SQLite or PostgreSQL "
        "(got 'mysql://x/y')"
    )
    assert config_error(DATABASE_URL="::nonsense").startswith("invalid setting DATABASE_URL: not")
    assert "PARLEY_MODEL_TIMEOUT" in config_error(PARLEY_MODEL_TIMEOUT="soon")


def test_plain_database_urls_get_the_async_driver() -> None:
    settings = make_settings(DATABASE_URL="postgresql://parley:s3cret@db/parley")
    assert settings.database_url == "postgresql+asyncpg://parley:s3cret@db/parley"
    assert make_settings(DATABASE_URL="sqlite:///x.db").database_url == "sqlite+aiosqlite:///x.db"


def test_an_unknown_persona_setting_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        load_personas(make_settings(PARLEY_PERSONA="pirate"))
    assert str(caught.value) == (
        "PARLEY_PERSONA: unknown persona 'pirate'; available: assistant, coder, editor, translator"
    )


def test_shipped_personas_are_valid_and_render_every_variable() -> None:
    catalogue = PersonaCatalogue.load(SHIPPED_PERSONAS)
    assert len(catalogue) >= 3
    for persona in catalogue:
        assert persona.description
        prompt = persona.render_system_prompt(
            bot_name="Bot", platform="slack", user_name="Ann", today=date(2026, 1, 2)
        )
        assert "Bot" in prompt and "slack" in prompt and "2026-01-02" in prompt and "Ann" in prompt


def test_a_users_directory_adds_and_overrides_personas(tmp_path: Path) -> None:
    (tmp_path / "pirate.toml").write_text(
        'description = "Arr"\nsystem_prompt = "You are {bot_name}, a pirate."\nmodel = "gpt-4.1"\n'
    )
    (tmp_path / "coder.toml").write_text('description = "mine"\nsystem_prompt = "Code."\n')
    catalogue, default = load_personas(
        make_settings(PARLEY_PERSONAS_DIR=str(tmp_path), PARLEY_PERSONA="pirate")
    )
    assert default.name == "pirate" and default.model == "gpt-4.1"
    assert catalogue.get("coder").description == "mine"  # type: ignore[union-attr]
    assert "assistant" in catalogue.names()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('system_prompt = "Hi {nickname}"', "unknown variable(s) nickname"),
        ('system_prompt = "x"\ntemperature = 3', "temperature: Input should be less than"),
        ('system_prompt = "x"\ncolour = "red"', "colour: Extra inputs are not permitted"),
        ("system_prompt = ", "Invalid value"),
        ('description = "no prompt"', "system_prompt: Field required"),
    ],
)
def test_a_bad_persona_file_is_named_with_its_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        parse_persona(path)
    assert str(caught.value).startswith(f"persona file {path}: ")
    assert problem in str(caught.value)


def test_a_missing_personas_directory_is_a_setting_error(tmp_path: Path) -> None:
    message = config_error(PARLEY_PERSONAS_DIR=str(tmp_path / "nope"))
    assert message.startswith("invalid setting PARLEY_PERSONAS_DIR:")


def test_a_copy_of_env_example_loads_with_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    (tmp_path / ".env").write_text(example.read_text())
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings == make_settings()
    assert settings.uses_embedded_model
    listed = {line.split("=")[0] for line in example.read_text().splitlines() if "=" in line}
    assert {field.alias for field in Settings.model_fields.values()} <= listed


def test_moderation_and_policy_settings_are_checked_at_start_up(tmp_path: Path) -> None:
    assert config_error(PARLEY_MODERATION="pii,virus-scan").startswith(
        "invalid setting PARLEY_MODERATION: Input should be 'rules', 'pii', 'secrets', 'openai' "
        "or 'none' (got 'virus-scan')"
    )
    assert "cannot be combined" in config_error(PARLEY_MODERATION="none,pii")
    assert make_settings().moderation == ("secrets",)
    assert make_settings(PARLEY_MODERATION="none").moderation == ()
    assert "names no policy file" in config_error(PARLEY_MODERATION="rules")
    assert "no model service is configured" in config_error(PARLEY_MODERATION="openai")
    assert "is not a file" in config_error(PARLEY_MODERATION_POLICY=str(tmp_path))
    assert config_error(PARLEY_PRICES="{gpt: 1}").startswith(
        "invalid setting PARLEY_PRICES: not JSON"
    )
    assert config_error(PARLEY_USER_RPM="-1").startswith("invalid setting PARLEY_USER_RPM:")


def test_a_bad_policy_file_is_one_line_naming_it(tmp_path: Path) -> None:
    from core.moderation_policy import load_policy_file

    policy = tmp_path / "policy.toml"
    policy.write_text('[pii]\nemail = "shred"\n[[rules]]\nname = "x"\npatterns = ["("]\n')
    with pytest.raises(ConfigError) as caught:
        load_policy_file(policy)
    message = str(caught.value)
    assert message.startswith(f"PARLEY_MODERATION_POLICY: {policy}: pii.email: Input should be")
    assert "rules.0" in message and "\n" not in message


def test_platform_settings_are_checked_at_start_up() -> None:
    assert "DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT" in config_error(DISCORD_SHARD_IDS="0,1")
    assert "below DISCORD_SHARD_COUNT (2)" in config_error(
        DISCORD_SHARD_COUNT="2", DISCORD_SHARD_IDS="1,2"
    )
    assert config_error(DISCORD_GATEWAY_URL="http://x").startswith(
        "invalid setting DISCORD_GATEWAY_URL:"
    )
    settings = load_settings(_env_file=None, DISCORD_SHARD_COUNT="4", DISCORD_SHARD_IDS="0, 2")
    assert settings.discord_shard_ids == (0, 2)


def test_malformed_json_settings_from_the_environment_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The environment path, where pydantic-settings used to parse JSON itself and raise.
    monkeypatch.setenv("PARLEY_PRICES", '{"my-model": [0.15, 0.60],}')
    assert config_error().startswith("invalid setting PARLEY_PRICES: not JSON")
    monkeypatch.setenv("PARLEY_PRICES", '{"my-model": [0.15, 0.60]}')
    assert load_settings(_env_file=None).prices == {"my-model": (0.15, 0.60)}


def test_the_default_database_is_in_the_users_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    expected = f"sqlite+aiosqlite:///{tmp_path}/data/parley/parley.db"
    assert load_settings(_env_file=None).database_url == expected
    assert load_settings(_env_file=None, DATABASE_URL="").database_url == expected


def test_a_refused_token_is_never_shown_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "not-a-slack-token-but-secret")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "not-a-slack-token-but-secret" not in str(error.value)
    assert str(error.value).startswith("invalid setting SLACK_BOT_TOKEN: a bot token starts")
