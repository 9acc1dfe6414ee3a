"""``simulate --json`` reports the schedule it chose (issue #15): the values the plan runs and
the planner's explanation, or that the recipe was fixed by the caller."""

from __future__ import annotations

import json

import pytest

from harness import simulation

pytestmark = pytest.mark.django_db


def _federation(tmp_path, prefix, **overrides):
    table = simulation.default_table()
    parts = simulation.partition(table, 3, tmp_path)
    return simulation.setup_federation(
        partitions=parts, schema=simulation.schema_for(table, parts[0]), epsilon=8.0, rounds=3, prefix=prefix, plan_overrides=overrides or None
    )


def test_the_plan_summary_is_what_the_plan_runs_with_the_planners_explanation(tmp_path):
    fed = _federation(tmp_path, "ps")
    summary = simulation.plan_summary(fed)
    json.dumps(summary)  # the --json line
    plan = fed.plan
    assert summary["source"] == "planner"
    assert (summary["sampling_rate"], summary["local_steps"], summary["clip_norm"], summary["learning_rate"]) == (
        plan.sampling_rate, plan.local_steps, plan.clip_norm, plan.learning_rate,
    )
    assert summary["noise_multiplier"] == plan.noise_multiplier and summary["server_optimizer"] == plan.server_optimizer
    assert summary["eval_noise_multiplier"] == plan.eval_noise_multiplier and summary["rounds"] == 3
    assert "clip norm" in summary["explanation"] and "noise multiplier" in summary["explanation"]
    assert all(0 < e <= 8.0 for e in summary["epsilon"].values())


def test_a_fixed_noise_is_reported_as_a_fixed_recipe(tmp_path):
    fed = _federation(tmp_path, "pf", noise_multiplier=3.0)
    summary = simulation.plan_summary(fed)
    assert summary["source"] == "fixed" and summary["noise_multiplier"] == 3.0 and "fixed recipe" in summary["explanation"]
