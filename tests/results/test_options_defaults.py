"""ResultOptions takes its defaults from the settings schema, and from_settings maps every
`results:` setting: a default changed in dsm_node/settings.py reaches library callers too."""
from __future__ import annotations

import dataclasses

from dsm_node.results.options import FROM_SETTINGS, ResultOptions
from dsm_node.settings import Results, Settings


def test_defaults_are_the_schema_defaults():
    options = ResultOptions(model_version="1")
    schema = Results()
    for option, setting in FROM_SETTINGS.items():
        assert getattr(options, option) == getattr(schema, setting), option


def test_every_results_setting_reaches_the_options():
    assert set(FROM_SETTINGS.values()) == set(Results.model_fields)
    assert set(FROM_SETTINGS) <= {f.name for f in dataclasses.fields(ResultOptions)}


def test_from_settings_takes_the_site_values():
    changed = {"seg_series_number": 7001, "secondary_capture": False, "institution_name": "Site A",
               "organs_include_tumors": True, "lesion_min_volume_ml": 1.5}
    settings = Settings(results=changed)
    options = ResultOptions.from_settings(settings, model_version="2", revision=3)
    assert (options.seg_series_number, options.key_images, options.institution_name) == (7001, False, "Site A")
    assert options.organs_include_tumors and options.lesion_min_volume_ml == 1.5
    assert options.revision == 3 and options.model_version == "2"
