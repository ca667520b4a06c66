"""Exactly-once across SIGKILLs: the chaos test (CI-sized; ``perf/chaos.py`` runs 1M events)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from sluice.harness.chaos import chaos_run, judge, reference_run, start_sending

N_EVENTS = 100_000
SEND_RATE = 8_000  # events/s: the input keeps arriving for ~12 s, across every kill


def _chaos(settings, tmp_path, topologies, seed, events=N_EVENTS, rate=SEND_RATE, kills=3):
    """The crash-free reference runs while the chaos run's later lives do (it needs only the whole input, and
    writes topics of its own): the same verdict, a reference run's time less to wait."""
    sender = start_sending(settings, seed=seed, count=events, rate=rate)
    with ThreadPoolExecutor(1) as pool:
        chaos = pool.submit(chaos_run, settings, tmp_path, sender, topologies, kills=kills, seed=seed)
        sender.join()
        reference = reference_run(settings, tmp_path)
        kills = chaos.result()
    verdict = judge(settings, reference, kills, events)
    assert verdict.expected > 0.99 * events
    assert (verdict.missing, verdict.duplicated, verdict.differing) == (0, 0, 0), verdict
    assert verdict.dead_letters_match and verdict.input_accounted and verdict.exactly_once


def test_chaos_in_the_default_suite_two_kills_and_a_rescale_exactly_once(settings, tmp_path):
    """A small chaos run in every CI run (the 100k-event ones are ``slow``): input arrives for ~5 s, across
    the first kill; the lives run 2 processes, then 1, so each resume also rescales."""
    _chaos(settings, tmp_path, [{"processes": 2}, {"processes": 1}], seed=23, events=16_000, rate=3_000, kills=2)


@pytest.mark.slow
def test_chaos_single_process_kill9_exactly_once(settings, tmp_path):
    _chaos(settings, tmp_path, [{"processes": 1}], seed=21)


@pytest.mark.slow
def test_chaos_two_processes_and_rescaling_exactly_once(settings, tmp_path):
    """Lives alternate 2 processes, 1 process, 1 process of 2 workers: every resume rescales."""
    _chaos(settings, tmp_path, [{"processes": 2}, {"processes": 1}, {"processes": 1, "workers": 2}], seed=22)
