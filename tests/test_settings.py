"""Settings: typed, checked, one line per problem, and documented in the README with their real defaults."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest

from sluice.settings import (
    AssistantSettings,
    FlowSettings,
    FraudSettings,
    PersonalizeSettings,
    ReviewSettings,
    SettingsError,
    env_name,
    update_readme_tables,
)

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SLUICE_EXACTLY_ONCE": "ture"}, "SLUICE_EXACTLY_ONCE='ture' is not a boolean: use true, false, 1 or 0"),
        ({"SLUICE_STOP_AT_END": "yes"}, "SLUICE_STOP_AT_END='yes' is not a boolean"),
        ({"SLUICE_MAX_BATCH": "abc"}, "SLUICE_MAX_BATCH='abc' is not a whole number"),
        ({"SLUICE_MAX_BATCH": "0"}, "SLUICE_MAX_BATCH=0 is too small: it must be at least 1"),
        ({"SLUICE_SOURCE_BATCH_SIZE": "0"}, "SLUICE_SOURCE_BATCH_SIZE=0 is too small"),
        ({"SLUICE_INFERENCE_SHARDS": "-1"}, "SLUICE_INFERENCE_SHARDS=-1 is too small"),
        ({"SLUICE_ALLOWED_LATENESS_S": "-5"}, "SLUICE_ALLOWED_LATENESS_S=-5.0 is too small"),
        ({"SLUICE_REDIS_URL": "localhost:6379"}, "SLUICE_REDIS_URL='localhost:6379': a Redis URL starts with redis://"),
        ({"SLUICE_DEVICE": "gpu"}, "SLUICE_DEVICE='gpu': use auto, cpu, cuda or cuda:N"),
        (
            {"SLUICE_BROKER_PROFILE": "fast"},
            "SLUICE_BROKER_PROFILE='fast' is not allowed: use one of latency, throughput, kafka",
        ),
        ({"SLUICE_START_FROM": "yesterday"}, "SLUICE_START_FROM='yesterday': bad start position"),
        ({"SLUICE_START_FROM": "offset:-1"}, "SLUICE_START_FROM='offset:-1': bad start position"),
        ({"SLUICE_MAX_WAIT_MS": "nan"}, "SLUICE_MAX_WAIT_MS='nan' is not a finite number"),
        ({"SLUICE_BROKERS": ""}, "SLUICE_BROKERS='': use host:port, comma-separated"),
        ({"SLUICE_CONNECT_TIMEOUT_S": "inf"}, "SLUICE_CONNECT_TIMEOUT_S='inf' is not a finite number"),
        ({"SLUICE_TRANSACTIONS_TOPIC": "my topic"}, "SLUICE_TRANSACTIONS_TOPIC='my topic': a Kafka topic name"),
    ],
)
def test_each_bad_value_is_one_line_naming_the_variable(env, message):
    with pytest.raises(SettingsError) as info:
        FraudSettings.from_env(env)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_settings_valid_alone_but_not_together_are_one_line_naming_both():
    with pytest.raises(SettingsError) as info:
        AssistantSettings.from_env({"SLUICE_CHUNK_TOKENS": "16", "SLUICE_CHUNK_OVERLAP": "32"})
    assert str(info.value) == "SLUICE_CHUNK_OVERLAP=32 must be less than SLUICE_CHUNK_TOKENS=16"
    assert AssistantSettings.from_env({"SLUICE_CHUNK_TOKENS": "33", "SLUICE_CHUNK_OVERLAP": "32"}).chunk_tokens == 33


def test_every_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as info:
        FraudSettings.from_env({"SLUICE_MAX_BATCH": "abc", "SLUICE_EXACTLY_ONCE": "2"})
    assert len(str(info.value).splitlines()) == 2


def test_booleans_accept_true_false_1_0_in_any_case():
    assert FraudSettings.from_env({"SLUICE_EXACTLY_ONCE": "TRUE"}).exactly_once is True
    assert FraudSettings.from_env({"SLUICE_EXACTLY_ONCE": "0"}).exactly_once is False


def test_kafka_options_pass_through_and_round_trip():
    s = FraudSettings.from_env({"SLUICE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SLUICE_MAX_BATCH": "7"})
    assert s.connection().client_config()["security.protocol"] == "SASL_SSL"
    assert FraudSettings.from_env(s.to_env()) == s


def test_an_unknown_variable_is_warned_about_with_a_suggestion(caplog):
    with caplog.at_level(logging.WARNING, logger="sluice.settings"):
        FraudSettings.from_env({"SLUICE_MAX_BACH": "64"})
    assert "SLUICE_MAX_BACH" in caplog.text and "SLUICE_MAX_BATCH" in caplog.text


def test_every_workflow_owns_its_topics():
    fraud, assistant = FraudSettings(), AssistantSettings()
    assert set(fraud.topics()) == {
        "transactions", "fraud-decisions", "fraud-labels", "dead-letters", "fraud-features", "shadow-decisions",
        "fraud-rationales", "alarms",
    }  # fmt: skip
    assert fraud.topics()["alarms"] == 1
    assert "fraud-features" not in replace(fraud, features_topic="").topics()  # optional outputs can be off
    assert assistant.topics()["documents"] == 1  # one partition: versions stay ordered
    assert set(assistant.input_topics()) == {"documents", "chat-requests"}


def test_the_review_chain_reads_the_fraud_flows_decisions_and_notes_by_default():
    fraud, review = FraudSettings(), ReviewSettings()
    assert (review.decisions_topic, review.rationale_topic) == (fraud.decisions_topic, fraud.rationales_topic)
    own = review.with_own_topics("t1")
    assert (own.decisions_topic, own.rationale_topic) == (fraud.decisions_topic, fraud.rationales_topic)
    assert own.cases_topic == "review-cases-t1"


@pytest.mark.parametrize("cls", FlowSettings.all_classes, ids=lambda c: c.__name__)
def test_every_setting_is_in_the_readme_with_its_real_default(cls):
    readme = README.read_text()
    for f in cls.settings_fields():
        name = env_name(f.name)
        default = getattr(cls, f.name)
        shown = str(int(default)) if isinstance(default, bool) else (str(default) if default != "" else "(empty)")
        rows = [line for line in readme.splitlines() if re.search(rf"`{name}`", line)]
        assert rows, f"{name} is not documented in README.md"
        assert any(f"`{shown}`" in row for row in rows), f"README gives {name} another default than {shown!r}"


def test_the_readme_tables_are_generated_from_the_settings():
    """`sluice settings --write-readme README.md` regenerates them; a stale table fails here."""
    assert update_readme_tables(README.read_text()) == README.read_text()


def test_a_benchmark_variant_names_real_fields_with_valid_values():
    """`--set FIELD=VALUE` (perf.drain, perf.bench, perf.personalize_bench) becomes the flow's variables, checked
    before any stack starts: the variable reaches the settings the flow builds; a bad value names the variable."""
    env = PersonalizeSettings.overrides(["ann_nprobe=32", "broker_profile=throughput"])
    assert PersonalizeSettings.from_env(env).ann_nprobe == 32
    assert PersonalizeSettings.from_env(env).broker_profile == "throughput"
    with pytest.raises(SettingsError, match="SLUICE_ANN_NPROBE"):
        PersonalizeSettings.overrides(["ann_nprobe=many"])
    with pytest.raises(SettingsError, match="expected FIELD=VALUE"):
        FraudSettings.overrides(["max_batch"])
