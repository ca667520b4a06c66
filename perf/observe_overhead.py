"""What the metrics cost: the drain benchmark with and without them, runs interleaved.

    python -m perf.observe_overhead --count 200000 --runs 3     # the real figure (a quiet machine)
    python -m perf.observe_overhead --count 20000 --runs 1      # a smoke run (summary.json untouched)

Each pair runs :func:`perf.drain.drain_once` plain (``SLUICE_METRICS_PORT=0``:
nothing recorded) and with metrics on and ``/metrics`` scraped every second, on
a fresh stack each, in alternating order (without-with, with-without, ...), so
slow drifts of the machine and the position in a pair hit both sides alike.
``observe.metrics_overhead_share`` is the drain throughput lost, the median over
the pairs of ``1 - with / without`` (floored at 0): a pair's two runs are a minute
apart, so drifts of the shared machine cancel inside a pair but not between
medians taken over all runs (2026-11-30: pairs lost 5.3%, 1.8% and 1.4% while the
plain runs alone spread 5.8%). ``1 - median(with) / median(without)``, the CPU
per event of both sides and every run are in ``perf/reports/observe-overhead-<date>.json``.
Only a run of at least 100,000 events and 3 pairs writes ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from models.train_fraud import ensure_trained
from perf.drain import DrainRun, arguments, drain_once
from perf.summary import broker_profile, median_and_spread, record, report_stem
from sluice.settings import FraudSettings

REAL_COUNT, REAL_RUNS = 100_000, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs (without, with metrics)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--profile", type=broker_profile, default="latency")
    parser.add_argument("--label", default="", help="a name for this variant in the report file")
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes (0: none)")
    args = parser.parse_args(argv)
    ensure_trained(FraudSettings().model_path)
    drain = ["--count", str(args.count), "--partitions", str(args.partitions), "--profile", args.profile]
    common = vars(arguments().parse_args([*drain, "--scrape-every", str(args.scrape_every)]))
    plain: list[DrainRun] = []
    metered: list[DrainRun] = []
    for i in range(args.runs):
        order = ((False, plain), (True, metered)) if i % 2 == 0 else ((True, metered), (False, plain))
        for metrics, runs in order:  # ABBA: the second run of a pair is often slower on a busy machine
            r = drain_once(argparse.Namespace(**common | {"metrics": metrics}), 2 * i + int(metrics))
            runs.append(r)
            print(f"pair {i + 1} {'with' if metrics else 'without'} metrics: {r.events_per_s:,.0f} events/s, "
                  f"{r.cpu_us_per_event:.1f} us/event", flush=True)  # fmt: skip
    rate_off = median_and_spread([r.events_per_s for r in plain])
    rate_on = median_and_spread([r.events_per_s for r in metered])
    cpu_off = median_and_spread([r.cpu_us_per_event for r in plain])
    cpu_on = median_and_spread([r.cpu_us_per_event for r in metered])
    pair_losses = [1.0 - on.events_per_s / off.events_per_s for off, on in zip(plain, metered, strict=True)]
    pair_cpu = [on.cpu_us_per_event / off.cpu_us_per_event - 1.0 for off, on in zip(plain, metered, strict=True)]
    share = float(np.median(pair_losses))
    cpu_share = float(np.median(pair_cpu))
    real = args.count >= REAL_COUNT and args.runs >= REAL_RUNS and not args.label
    report = {
        "benchmark": "observe_overhead",
        "command": "python -m perf.observe_overhead " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "count": args.count,
        "pairs": args.runs,
        "scrape_every_s": args.scrape_every,
        "without_metrics": {"runs": [r.__dict__ for r in plain], "median_events_per_s": rate_off[0],
                            "events_per_s_spread": rate_off[1:], "median_cpu_us_per_event": cpu_off[0]},
        "with_metrics": {"runs": [r.__dict__ for r in metered], "median_events_per_s": rate_on[0],
                         "events_per_s_spread": rate_on[1:], "median_cpu_us_per_event": cpu_on[0]},
        "throughput_lost_share": round(share, 4),
        "throughput_lost_share_per_pair": [round(x, 4) for x in pair_losses],
        "throughput_lost_share_of_medians": round(1.0 - rate_on[0] / rate_off[0], 4),
        "cpu_per_event_added_share": round(cpu_share, 4),
        "cpu_per_event_added_share_per_pair": [round(x, 4) for x in pair_cpu],
        "recorded_in_summary": real,
    }  # fmt: skip
    label = "-".join(x for x in (args.label, "" if real else "smoke") if x)
    report_stem("observe-overhead", label).with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(f"throughput without metrics {rate_off[0]:,.0f}/s, with {rate_on[0]:,.0f}/s; per pair "
          f"{', '.join(f'{100 * x:.1f}%' for x in pair_losses)} lost (median {100 * share:.1f}%); "
          f"CPU per event {cpu_off[0]:.1f} -> {cpu_on[0]:.1f} us (per pair median {100 * cpu_share:+.1f}%)")  # fmt: skip
    if real:
        record("observe", {"metrics_overhead_share": max(0.0, share)})
    else:
        print(f"a smoke run (< {REAL_COUNT} events or < {REAL_RUNS} pairs): summary.json untouched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
