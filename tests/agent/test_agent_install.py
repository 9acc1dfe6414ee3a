"""A partner's install is only the partner's: a fresh virtualenv holding requirements-agent.txt
and nothing else runs `python -m federation.agent` against a live coordinator (gunicorn,
Celery, Redis: harness/localstack.py) through enrolment and a completed round, and cannot
import Django, DRF or Celery.

The virtualenv is installed offline (`pip install --no-index --find-links`) from the wheels
`make venv` builds (.venv/wheelhouse-agent, `pip wheel -r requirements-agent.txt`) or, where
there are none, from wheels packed again from this interpreter's own installed distributions
(tests/agent/wheelhouse.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.wheelhouse import WheelhouseError, build_from_installed, requirements

ROOT = Path(__file__).resolve().parents[2]
AGENT_REQUIREMENTS = ROOT / "requirements-agent.txt"
MAKE_WHEELHOUSE = ROOT / ".venv" / "wheelhouse-agent"  # built by `make venv`
COORDINATOR_ONLY = ("django", "rest_framework", "celery")


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s#;]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def test_the_agent_requirements_are_pinned_as_the_coordinator_pins_them():
    agent, coordinator = _pins(AGENT_REQUIREMENTS), _pins(ROOT / "requirements.txt")
    assert {"numpy", "cryptography", "dp-accounting", "requests"} <= set(agent)
    assert len(agent) == len(requirements(AGENT_REQUIREMENTS)), "every requirement of the agent is pinned"
    assert {name: coordinator.get(name) for name in agent} == agent
    assert not {"django", "djangorestframework", "celery"} & set(agent)


def _wheelhouse(tmp: Path) -> tuple[Path, str]:
    given = os.environ.get("FEDGOV_AGENT_WHEELHOUSE")
    if given:
        return Path(given), "FEDGOV_AGENT_WHEELHOUSE"
    built = MAKE_WHEELHOUSE / ".built"
    if built.exists() and built.stat().st_mtime >= AGENT_REQUIREMENTS.stat().st_mtime:
        return MAKE_WHEELHOUSE, "make venv (pip wheel)"
    try:
        build_from_installed(AGENT_REQUIREMENTS, tmp)
    except WheelhouseError as exc:
        message = f"no wheelhouse for requirements-agent.txt: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (make venv builds one in .venv/wheelhouse-agent)")
        pytest.skip(message)
    return tmp, "packed again from the installed distributions"


@pytest.fixture(scope="module")
def agent_python(tmp_path_factory) -> Path:
    """The python of a new virtualenv (no system site-packages) holding only requirements-agent.txt."""
    base = tmp_path_factory.mktemp("agent-install")
    wheels, source = _wheelhouse(base / "wheels")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "install", "--quiet", "--no-compile",
         "--no-index", "--find-links", str(wheels), "-r", str(AGENT_REQUIREMENTS)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"pip install -r requirements-agent.txt from {wheels} ({source}) failed:\n{result.stderr}"
    return python


def _agent_env() -> dict:
    """The environment the stack gives an agent (harness/localstack.py, start_agent)."""
    from harness.localstack import django_env

    return {k: v for k, v in django_env().items() if k != "DJANGO_SETTINGS_MODULE"}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.xdist_group("stack")
def test_the_agent_runs_a_round_from_a_virtualenv_holding_only_requirements_agent(agent_python, tmp_path):
    from federation.agent.ledger_format import default_data_id
    from federation.agent.ledger_view import read_ledger
    from federation.models import TrainingPlan, TrainingRound
    from federation.services.rounds import round_request
    from harness import simulation
    from harness.localstack import local_stack

    env = _agent_env()
    # Nothing of the coordinator's stack is importable there, with the agent's environment.
    for module in COORDINATOR_ONLY:
        probe = subprocess.run([str(agent_python), "-c", f"import {module}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and f"No module named '{module}'" in probe.stderr, (module, probe.stderr)
    installed = subprocess.run(
        [str(agent_python), "-c", "import importlib.metadata as m; print('\\n'.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert {"numpy", "cryptography", "dp-accounting", "requests"} <= set(installed)
    assert not {"django", "djangorestframework", "celery", "gunicorn", "scikit-learn"} & set(installed), installed

    table = simulation.default_table()
    parts = simulation.partition(table, 3, tmp_path / "data")
    table.write(tmp_path / "all.csv")
    fed = simulation.setup_federation(
        partitions=parts, schema=simulation.schema_for(table, tmp_path / "all.csv"), epsilon=8.0, rounds=1, phase_timeout=20
    )
    with local_stack(log_dir=tmp_path / "logs") as stack:
        agents = [
            stack.agent(name=f"agent-{i + 1}", token=token, data=parts[i], state_dir=tmp_path / "agents" / slug, poll_wait=2,
                        python=str(agent_python))
            for i, (slug, token) in enumerate(fed.tokens.items())
        ]
        try:
            simulation.wait_for_agents(fed, timeout=60)
            round_request(actor=fed.admin, plan=fed.plan)
            plan = simulation.wait_for_plan(fed.plan, timeout=120)
        except TimeoutError:
            print(stack.logs()[-12000:])
            raise
        logs = {proc.name: proc.log.read_text(errors="replace") for proc in agents}
    assert plan.status == TrainingPlan.Status.COMPLETED, plan.stopped_reason
    rnd = plan.rounds.filter(status=TrainingRound.Status.COMPLETED).get()
    assert len(rnd.metrics["contributors"]) == 3
    for i, (slug, log) in enumerate(zip(fed.tokens, logs.values())):
        assert "enrolled for" in log and "Traceback" not in log, log[-3000:]
        # Each agent kept its own ledger in the virtualenv's run: the round reserved and committed.
        view = read_ledger(tmp_path / "agents" / slug, verify=True)
        assert view.error is None, view.error
        figures = view.by_data()[default_data_id(parts[i])]
        assert figures["committed"] >= 1 and figures["spent"] > 0
