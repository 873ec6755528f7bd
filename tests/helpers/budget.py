"""The suite's time budget: what the session-end report (tests/conftest.py) prints of the tests' durations."""

from __future__ import annotations

UNIT_BUDGET_S, INTEGRATION_BUDGET_S = 2.0, 30.0  # one test's own time (its call), per tier


def time_report(durations: dict[str, dict[str, float]], integration: set[str]) -> list[str]:
    """The ten slowest tests (setup, call and teardown together), each tier's total, and every test whose call alone
    is over its tier's budget (a unit test over 2 s, an integration test over 30 s). Setup includes the shared
    fixtures a test is the first to build, so only the call counts against the budget.

    `durations`: each test's id -> phase (setup, call, teardown) -> seconds; `integration`: the ids marked so."""
    total = {nodeid: sum(phases.values()) for nodeid, phases in durations.items()}
    lines = ["ten slowest tests (setup + call + teardown):"]
    for nodeid in sorted(total, key=lambda nodeid: (-total[nodeid], nodeid))[:10]:
        tier = "integration" if nodeid in integration else "unit"
        lines.append(f"  {total[nodeid]:7.1f} s  {tier:<11}  {nodeid}")
    for tier, members in (("unit", set(total) - integration), ("integration", integration & set(total))):
        lines.append(
            f"{tier} tier: {len(members)} tests, {sum(total[nodeid] for nodeid in members):.1f} s of test time"
        )
    over = sorted(
        (
            (phases.get("call", 0.0), nodeid, INTEGRATION_BUDGET_S if nodeid in integration else UNIT_BUDGET_S)
            for nodeid, phases in durations.items()
        ),
        key=lambda item: (-item[0], item[1]),
    )
    over = [item for item in over if item[0] > item[2]]
    for seconds, nodeid, budget in over:
        lines.append(f"OVER BUDGET ({budget:.0f} s): {seconds:.1f} s  {nodeid}")
    if not over:
        lines.append(f"no test over its budget (unit {UNIT_BUDGET_S:.0f} s, integration {INTEGRATION_BUDGET_S:.0f} s)")
    return lines
