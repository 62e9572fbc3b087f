"""Settings and the `limner` command line: precedence, refusals with their source, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import SettingsError, load_settings
from tests.conftest import REPO, free_port, server_env

pytestmark = pytest.mark.anyio


@pytest.mark.slow
@pytest.mark.parametrize("command", [["serve"], ["demo"], ["call", "generate", "--arg", "prompt=a boat"]])
def test_a_home_limner_cannot_write_in_is_one_line_and_exit_2_before_serving(home, models_path, command):
    """The store failing inside the lifespan ended the process with a traceback and no initialize answer."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "images").write_text("a file where the image store goes")
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", *command],
        capture_output=True,
        env=server_env(home, models_path),
        cwd=REPO,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and proc.stdout == b"", proc.stderr[-2000:]
    assert b"Traceback" not in proc.stderr and f"cannot use home {home}".encode() in proc.stderr


def test_settings_come_from_flags_over_environment_over_the_toml_file(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    (home / "limner.toml").write_text('max_wait_s = 5\nmax_batch = 3\nprofile = "real"\n')
    settings = load_settings(
        flags={"profile": "tiny"}, environ={"LIMNER_HOME": str(home), "LIMNER_MAX_BATCH": "6"}
    )
    assert (settings.max_wait_s, settings.max_batch, settings.profile) == (5, 6, "tiny")


def test_a_settings_mistake_is_reported_with_its_source(tmp_path):
    (tmp_path / "limner.toml").write_text("max_wiat_s = 5\n")
    with pytest.raises(SettingsError, match="max_wiat_s"):
        load_settings(environ={"LIMNER_HOME": str(tmp_path)})
    with pytest.raises(SettingsError, match="unknown"):
        load_settings(environ={"LIMNER_HOME": str(tmp_path / "x"), "LIMNER_GENERATOR_MODEL": "unknown"})


def test_home_and_the_config_path_are_honoured_or_refused_never_ignored(tmp_path):
    named = tmp_path / "my.toml"
    named.write_text(f'home = "{tmp_path / "data"}"\nmax_wait_s = 5\n')
    env = {"HOME": str(tmp_path / "user")}
    taken = load_settings(environ=env, config=named)
    assert taken.home == tmp_path / "data" and taken.max_wait_s == 5
    assert load_settings(environ={**env, "LIMNER_CONFIG": str(named)}).home == tmp_path / "data"
    over = load_settings(flags={"home": tmp_path / "flag"}, environ=env, config=named)
    assert over.home == tmp_path / "flag"  # the command line wins, as for every setting
    with pytest.raises(SettingsError, match="typo.toml.*LIMNER_CONFIG.*does not exist"):
        load_settings(environ={**env, "LIMNER_CONFIG": str(tmp_path / "typo.toml")})
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "limner.toml").write_text('home = "/elsewhere"\n')
    with pytest.raises(SettingsError, match="home: set in .*LIMNER_HOME"):
        load_settings(environ={"LIMNER_HOME": str(tmp_path / "h")})


def test_folders_given_with_a_leading_tilde_are_the_users_folders(tmp_path, monkeypatch):
    user = tmp_path / "user"
    monkeypatch.setenv("HOME", str(user))  # host configs pass "~/pics" without a shell to expand it
    env = {
        "HOME": str(user),
        "LIMNER_HOME": "~/h",
        "LIMNER_ALLOWED_DIRS": "~/pics",
        "LIMNER_MODELS_PATH": "~/m",
    }
    settings = load_settings(environ=env)
    assert settings.home == user / "h"
    assert settings.allowed_dirs == (user / "pics",) and settings.models_dir == user / "m"
    named = tmp_path / "my.toml"
    named.write_text('allowed_dirs = ["~/pics", "~/more"]\nmodels_path = "~/m2"\n')
    from_file = load_settings(environ={"HOME": str(user)}, config=named)
    assert from_file.allowed_dirs == (user / "pics", user / "more") and from_file.models_dir == user / "m2"


@pytest.mark.slow
def test_the_log_level_takes_any_case_and_a_wrong_one_is_a_one_line_error(tmp_path):
    assert load_settings(flags={"log_level": "debug"}, environ={"HOME": str(tmp_path)}).log_level == "DEBUG"
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--log-level", "verbose"],
        capture_output=True,
        env=server_env(tmp_path),
        cwd=REPO,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr and b"log_level" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[models.mine]\nrole = "generator"\nsorce = "/m"\n', "models.mine"),  # a misspelt key
        ('[models.mine]\nrole = "painter"\nsource = "/m"\n', "models.mine"),  # no such role
        ("models = 3\n", "models"),
        ('[models]\nmine = "sdxl"\n', "models.mine"),
        ('[models.mine]\nrole = "generator"\nsource = "/m"\nsize_factor = 0\n', "models.mine"),
        ('[models.mine]\nrole = "generator"\nsource = "/m"\nfocus_size = 100\n', "models.mine"),
        ('[models.mine]\nrole = "generator"\nsource = "/m"\ndefault_steps = 0\n', "models.mine"),
        ('[roles]\ngenrator = "flux-schnell"\n', "roles.genrator"),  # a misspelt role was ignored
        ('[roles]\ngenerator = "tiny-inpaint"\n', "is a inpainter, not a generator"),
    ],
)
def test_a_bad_model_spec_in_the_toml_file_is_a_settings_error_naming_it(tmp_path, toml, message):
    (tmp_path / "limner.toml").write_text(toml)
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings(environ={"LIMNER_HOME": str(tmp_path)})
    assert "limner.toml" in str(raised.value)
    # and the command line says so in one line on stderr, not with a traceback
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"],
        capture_output=True,
        env=server_env(tmp_path),
        cwd=REPO,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr and message.encode() in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["serve", "--port", "99999"], 2, b"port: Input should be less than or equal to 65535"),
        (["serve", "--max-wait-s", "-1"], 2, b"max_wait_s: Input should be greater than or equal to 0"),
        (["serve", "--home", "{file}"], 2, b"cannot use home"),
        (["demo", "--home", "{file}"], 2, b"cannot use home"),  # was "failed: MCPError: Connection closed"
        (["demo", "--profile", "real"], 1, b"limner demo: failed: generate answered with an error"),
    ],
)
def test_user_mistakes_on_the_command_line_are_one_line_without_a_traceback(tmp_path, args, code, message):
    home = tmp_path / "home"
    (tmp_path / "a-file").write_text("")
    argv = [a.replace("{file}", str(tmp_path / "a-file")) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", *argv],
        capture_output=True,
        env=server_env(home, tmp_path / "models"),
        cwd=REPO,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == code and b"Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
    assert proc.stdout == b""
    assert sum(b"invalid settings" in line for line in proc.stderr.splitlines()) <= 1


@pytest.mark.parametrize(
    ("environ", "flags", "message"),
    [
        ({"LIMNER_HOME": ""}, {}, "LIMNER_HOME is empty"),
        ({"LIMNER_HOME": "   "}, {}, "LIMNER_HOME is empty"),
        ({"LIMNER_HOME": "data"}, {}, "home: 'data' .*LIMNER_HOME.* is relative"),
        ({"LIMNER_HOME": "./"}, {}, "home: '.' .*LIMNER_HOME.* is relative"),
        ({}, {"home": Path("data")}, "home: 'data' .*--home.* is relative"),
        ({}, {"home": Path("")}, "home: '.' .*--home.* is relative"),
        ({"HOME": ""}, {}, "home: '.limner' .*HOME.* is relative"),
    ],
)
def test_an_empty_or_relative_home_is_a_settings_error_naming_where_it_came_from(environ, flags, message):
    """LIMNER_HOME="" became the working directory: images, sessions and the gallery were written there and
    its files became readable image paths (a host starting servers in / opened its whole disk)."""
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings(flags=flags, environ=environ)
    assert "absolute" in str(raised.value)


def test_a_relative_home_in_a_config_file_or_a_relative_folder_setting_is_refused(tmp_path):
    named = tmp_path / "my.toml"
    named.write_text('home = "data"\n')
    with pytest.raises(SettingsError, match="home: 'data' .*my.toml.* is relative"):
        load_settings(environ={"HOME": str(tmp_path)}, config=named)
    home = str(tmp_path / "h")
    for environ, field in (
        ({"LIMNER_HOME": home, "LIMNER_MODELS_PATH": "models"}, "models_path"),
        ({"LIMNER_HOME": home, "LIMNER_MODELS_PATH": ""}, "models_path"),
        ({"LIMNER_HOME": home, "LIMNER_ALLOWED_DIRS": f"{tmp_path}:pics"}, "allowed_dirs"),
    ):
        with pytest.raises(SettingsError, match=f"{field}.*absolute"):
            load_settings(environ=environ)
    absolute = load_settings(environ={"LIMNER_HOME": home, "LIMNER_ALLOWED_DIRS": str(tmp_path)})
    assert absolute.home == Path(home) and absolute.allowed_dirs == (tmp_path,)


@pytest.mark.slow
def test_serving_with_an_empty_limner_home_exits_2_and_writes_nothing_in_the_working_directory(
    tmp_path, models_path
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"],
        capture_output=True,
        env={**server_env(tmp_path / "unused", models_path), "LIMNER_HOME": ""},
        cwd=cwd,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert b"LIMNER_HOME is empty" in proc.stderr and proc.stdout == b""
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("token", ["", " ", "\t", " s3cret", "s3cret\n", "s3c\x00ret", "s\u00e9cret"])
def test_an_empty_blank_or_unsendable_token_is_a_settings_error(tmp_path, token):
    """--token " " started a server nobody could ever authenticate to: the header's value is stripped."""
    for source in ({"flags": {"token": token}}, {"environ": {"LIMNER_TOKEN": token}}):
        environ = {"LIMNER_HOME": str(tmp_path), **source.get("environ", {})}
        with pytest.raises(SettingsError, match="token: "):
            load_settings(flags=source.get("flags"), environ=environ)
    assert load_settings(flags={"token": "s3cret"}, environ={"LIMNER_HOME": str(tmp_path)}).token == "s3cret"


@pytest.mark.slow
@pytest.mark.parametrize("http", [True, False])
def test_a_blank_token_stops_the_server_at_start_up_whatever_the_transport(home, models_path, http):
    command = ["serve", "--token", " "] + (["--http", "--port", str(free_port())] if http else [])
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", *command],
        capture_output=True,
        env=server_env(home, models_path),
        cwd=REPO,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert b"token: " in proc.stderr and b"blank" in proc.stderr


def test_limner_call_with_a_json_nested_too_deeply_is_a_one_line_usage_error():
    from server.call import UsageError, parse_arguments

    with pytest.raises(UsageError, match="--json is nested too deeply to read"):
        parse_arguments([], "[" * 100_000 + "]" * 100_000)
    arguments, _ = parse_arguments(["note=" + "[" * 100_000], None)
    assert arguments["note"] == "[" * 100_000  # an --arg that is not JSON is the text as typed
