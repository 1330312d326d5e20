"""bench load's report parts: the batch-size histogram from a real exposition, RSS growth, ratios, frame stamping."""

from __future__ import annotations

import argparse

import pytest

from fpnlink.cloud.metrics import CloudMetrics
from fpnlink.shared.wire import pb
from fpnlink.tools.bench.common import comma_choices
from fpnlink.tools.bench.load import PHASES, batch_histogram, comparisons, reference_report, rss_report
from fpnlink.tools.bench.loadgen import stamp
from fpnlink.tools.cli import main


def test_batch_histogram_counts_batches_per_size():
    metrics = CloudMetrics()
    for size in (1, 1, 3, 8, 8, 8, 40):
        metrics.record_batch(size, [0.0] * size)
    text = metrics.render()[0].decode()
    assert batch_histogram(text) == {"1": 2, "3": 1, "8": 3, "48": 1}  # exact to 16, then the bucket's bound


def test_rss_growth_compares_the_first_and_last_window():
    samples = [(float(t), 100 * 2**20 if t < 150 else 110 * 2**20) for t in range(300)]
    report = rss_report(samples, 300.0)
    assert report["window_s"] == 60.0
    assert report["first_mib"] == 100.0 and report["last_mib"] == 110.0 and report["growth"] == 0.1
    assert rss_report([], 10.0)["samples_mib"] == [] and "growth" not in rss_report([], 10.0)


def test_reference_pools_the_passes_before_and_after_the_phases():
    report = reference_report([([100.0, 300.0], [50.0, 150.0]), ([200.0, 400.0], [100.0, 100.0])])
    assert report["separate_halves_ms"] == 250.0 and report["samples"] == 4
    assert report["separate_halves_ms_per_pass"] == [200.0, 300.0]
    assert report["frames_per_s_separate"] == 4.0
    assert report["shared_pass_ms"] == 100.0 and report["shared_vs_separate"] == 2.5
    assert "shared_pass_ms" not in reference_report([([100.0], [])])  # archs that share no heads


def test_comparisons_divide_frames_per_second():
    phases = {"defaults": {"frames_per_s": 1.2}, "batched": {"frames_per_s": 3.0}, "unbatched": {"frames_per_s": 2.0}}
    reference = reference_report([([1000.0, 1000.0], [500.0, 600.0])])  # separate 1 frame/s, shared pass 550 ms
    assert comparisons(phases, reference) == {"batched_vs_unbatched": 1.5, "service_vs_separate_halves": 1.2,
                                              "service_vs_shared_pass": 0.66}
    assert comparisons({"defaults": {"frames_per_s": 1.2}}, None) == {}
    assert comparisons(phases, reference_report([([500.0], [])])) == {"batched_vs_unbatched": 1.5,
                                                                       "service_vs_separate_halves": 0.6}


def test_stamp_changes_only_the_ids():
    template = pb.FeatureFrame(stream_id="load", frame_id=1, tasks=[pb.DETECT])
    stamped = pb.FeatureFrame.FromString(stamp(template, "load-3", 42))
    assert (stamped.stream_id, stamped.frame_id, list(stamped.tasks)) == ("load-3", 42, [pb.DETECT])
    assert template.frame_id == 1


def test_comma_choices_parses_a_subset_and_refuses_the_rest():
    parse = comma_choices(PHASES)
    assert parse("unbatched, batched,unbatched") == ["unbatched", "batched"]
    for bad in ("batched,nope", ",", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="known: \\['batched', 'defaults', 'unbatched'\\]"):
            parse(bad)


def test_bench_cli_refuses_unknown_choices(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["bench", "load", "--phases", "batched,nope", "--json", "x.json"])
    assert exited.value.code == 2
    assert "argument --phases: unknown ['nope']" in capsys.readouterr().err
