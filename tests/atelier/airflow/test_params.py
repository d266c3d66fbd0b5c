"""The trigger form is derived from the package's rules: its defaults make a valid drop request,
an empty drop id is allowed, and its bounds are the request check's."""

from __future__ import annotations

import pytest

from atelier import catalog, planning
from atelier.airflow.params import drop_params, render_pools
from atelier.campaign import DropRequest


def test_the_forms_defaults_are_a_valid_request():
    params = {name: p.resolve() for name, p in drop_params().items()}
    assert params["drop_id"] is None  # optional in the form: empty means derived from the manifest
    req = DropRequest.from_params(params)
    assert req.brand == "maison-demo" and req.drop_id is None


def test_the_form_and_the_request_check_share_their_rules():
    params = drop_params()
    assert params["priority"].schema["enum"] == list(catalog.PRIORITIES)
    assert params["brand"].schema["pattern"] == catalog.SLUG.pattern
    assert params["shard_size"].schema["maximum"] == planning.MAX_SHARD_SIZE
    assert set(params["output_specs"].schema["items"]["enum"]) == set(catalog.all_specs())
    with pytest.raises(catalog.ConfigError, match="shard_size"):
        DropRequest.from_params(
            {**{n: p.resolve() for n, p in params.items()}, "shard_size": planning.MAX_SHARD_SIZE + 1}
        )


def test_every_provider_renders_in_its_own_pool():
    assert render_pools()["studio"] == "provider_studio"
    assert render_pools()["refservice"] == "provider_refservice"
