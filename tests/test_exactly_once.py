"""Exactly-once across SIGKILLs: the chaos test (CI-sized; ``perf/chaos.py`` runs 1M events)."""

from __future__ import annotations

import pytest

from sluice.harness.chaos import chaos_run, judge, reference_run, start_sending

N_EVENTS = 100_000
SEND_RATE = 8_000  # events/s: the input keeps arriving for ~12 s, across every kill


def _chaos(settings, tmp_path, topologies, seed):
    sender = start_sending(settings, seed=seed, count=N_EVENTS, rate=SEND_RATE)
    kills = chaos_run(settings, tmp_path, sender, topologies, kills=3, seed=seed)
    verdict = judge(settings, reference_run(settings, tmp_path), kills)
    assert verdict.kills >= 3
    assert verdict.expected > 0.99 * N_EVENTS
    assert (verdict.missing, verdict.duplicated, verdict.differing) == (0, 0, 0), verdict
    assert verdict.dead_letters_match and verdict.exactly_once


@pytest.mark.slow
def test_chaos_single_process_kill9_exactly_once(settings, tmp_path):
    _chaos(settings, tmp_path, [{"processes": 1}], seed=21)


@pytest.mark.slow
def test_chaos_two_processes_and_rescaling_exactly_once(settings, tmp_path):
    """Lives alternate 2 processes, 1 process, 1 process of 2 workers: every resume rescales."""
    _chaos(settings, tmp_path, [{"processes": 2}, {"processes": 1}, {"processes": 1, "workers": 2}], seed=22)
