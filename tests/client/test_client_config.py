"""``ClientConfig`` holds a client's timeouts once: the managers' keyword arguments default to
it and build one, checked before anything connects, for the source that uses it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from embedshare.access import SharedEmbeddingManager
from embedshare.client.config import CLIENT_DEFAULTS, ClientConfig
from embedshare.ray.source import RayEmbeddingManager
from embedshare.settings import SettingError
from embedshare.sources.service import ServiceSource


def test_the_defaults_are_ten_minutes_for_an_answer_and_five_seconds_to_connect():
    assert (CLIENT_DEFAULTS.request_timeout, CLIENT_DEFAULTS.connect_timeout) == (600.0, 5.0)


@pytest.mark.parametrize("name", ["request_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [0, -1, float("nan"), "5", None])
def test_a_bad_timeout_is_refused_in_one_line_naming_it(name, value):
    with pytest.raises(SettingError, match=rf"^{name} must be a number of seconds") as info:
        ClientConfig(**{name: value})
    assert "\n" not in str(info.value)


def test_it_cannot_be_changed_once_checked():
    config = ClientConfig(request_timeout=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.request_timeout = 0  # type: ignore[misc]


@pytest.mark.parametrize("client", [SharedEmbeddingManager, RayEmbeddingManager])
def test_every_client_s_keyword_defaults_are_the_config_s(client):
    parameters = inspect.signature(client).parameters
    for field in dataclasses.fields(ClientConfig):
        assert parameters[field.name].default == getattr(CLIENT_DEFAULTS, field.name), (client, field.name)


def test_the_source_takes_the_config_not_a_copy_of_its_fields():
    parameters = inspect.signature(ServiceSource).parameters
    assert parameters["config"].default is CLIENT_DEFAULTS
    assert not {field.name for field in dataclasses.fields(ClientConfig)} & set(parameters)
