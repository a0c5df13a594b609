from pathlib import Path

import pytest
import yaml

from renku_metrics.core.config import load_config
from renku_metrics.core.errors import ConfigError
from renku_metrics.core.extract import build_sources

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, doc) -> Path:
    path = tmp_path / "deployments.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def demo(name="alpha", **changes):
    item = {"name": name, "start_date": "2025-01-01", "sources": {"demo": {"seed": 1}}}
    item.update(changes)
    return item


def test_shipped_file_loads_without_credentials():
    config = load_config(REPO / "deployments.yaml", env={})
    assert config.names == ["demo", "demo_small"]
    assert all(set(d.sources) == {"demo"} for d in config.deployments)


def test_env_var_selects_file(tmp_path):
    path = write(tmp_path, {"deployments": [demo("gamma")]})
    assert load_config(env={"RENKU_METRICS_DEPLOYMENTS": str(path)}).names == ["gamma"]


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"deployments": [demo(colour="red")]}, "deployment 'alpha': unknown key 'colour'"),
        (
            {"deployments": [{"name": "alpha", "sources": {"demo": {}}}]},
            "deployment 'alpha': missing required key 'start_date'",
        ),
        ({"deployments": [demo(start_date="2025-13-01")]}, "deployment 'alpha': start_date must be a date"),
        ({"deployments": [demo(), demo()]}, "deployment 'alpha': duplicate deployment name"),
        ({"deployments": [demo(name="All")]}, "name must match"),
        ({"deployments": [demo(sources={"jira": {}})]}, "sources.jira: unknown source type"),
        ({"deployments": [demo(sources={"demo": {"seed": "x"}})]}, "sources.demo.seed: expected an integer"),
        ({"deployments": [demo(sources={"demo": {"sead": 1}})]}, "sources.demo: unknown key 'sead'"),
        ({"deployments": []}, "non-empty list"),
        (
            {"deployments": [demo(launched_on_start_date="yes")]},
            "deployment 'alpha': launched_on_start_date must be true or false",
        ),
        ({"deployment": []}, "single top-level key 'deployments'"),
        ("deployments: [", "not valid YAML"),
        (
            "deployments:\n  - {name: alpha, start_date: 2025-13-01, sources: {demo: {}}}\n",
            "deployment 'alpha': start_date must be a date",
        ),
    ],
)
def test_bad_config_names_file_deployment_and_key(tmp_path, doc, message):
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="deployments file not found"):
        load_config(tmp_path / "nope.yaml", env={})


def test_loading_does_not_need_secrets_building_the_sources_does(tmp_path):
    doc = {
        "deployments": [
            demo(
                sources={
                    "keycloak": {
                        "url": "https://renku.example.org/auth",
                        "realm": "Renku",
                        "client_id": "renku-metrics",
                        "client_secret_env": "ALPHA_KEYCLOAK_SECRET",
                    }
                }
            )
        ]
    }
    path = write(tmp_path, doc)
    config = load_config(path, env={})
    assert config.names == ["alpha"]
    assert config.deployment("alpha").sources["keycloak"].secret_env_vars() == {
        "client_secret_env": "ALPHA_KEYCLOAK_SECRET"
    }
    with pytest.raises(ConfigError) as info:
        build_sources(config.deployment("alpha"), env={})
    assert str(info.value) == (
        "deployment 'alpha': sources.keycloak.client_secret_env: environment variable ALPHA_KEYCLOAK_SECRET is not set"
    )
    assert set(build_sources(config.deployment("alpha"), env={"ALPHA_KEYCLOAK_SECRET": "s3cret"})) == {"keycloak"}


@pytest.mark.parametrize(
    "text, key",
    [
        (
            "deployments:\n  - name: alpha\n    name: beta\n    start_date: 2025-01-01\n    sources: {demo: {}}\n",
            "line 3: duplicate key 'name'",
        ),
        (
            "deployments:\n  - name: alpha\n    start_date: 2025-01-01\n    sources: {demo: {seed: 1, seed: 2}}\n",
            "line 4: duplicate key 'seed'",
        ),
        (
            "deployments: []\ndeployments:\n  - {name: alpha, start_date: 2025-01-01, sources: {demo: {}}}\n",
            "duplicate key 'deployments'",
        ),
    ],
)
def test_duplicate_keys_are_errors_naming_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value) and key in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["alpha\n", "a" * 64])
def test_deployment_name_with_newline_or_too_long_is_an_error(tmp_path, name):
    path = write(tmp_path, {"deployments": [demo(name=name)]})
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: deployment {name!r}: name must match")
    assert "at most 63 characters" in message and "\n" not in message


def test_deployment_name_of_63_characters_is_fine(tmp_path):
    path = write(tmp_path, {"deployments": [demo(name="a" * 63)]})
    assert load_config(path, env={}).names == ["a" * 63]


def test_excluded_users_accept_keycloak_ids_and_keys(tmp_path):
    key = "0" * 32
    path = write(tmp_path, {"deployments": [demo(excluded_users=["kc-user", key, "gitlab:5"])]})
    deployment = load_config(path, env={}).deployment("alpha")
    keys = deployment.excluded_user_keys()
    assert key in keys and "gitlab:5" in keys and len(keys) == 3
