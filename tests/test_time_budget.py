"""The session-end time report (tests/conftest.py, tests/helpers/budget.py): the ten slowest tests, each tier's
total, and every test over its tier's budget named."""

from helpers.budget import INTEGRATION_BUDGET_S, UNIT_BUDGET_S, time_report


def test_the_report_names_the_slowest_the_totals_and_every_test_over_budget():
    durations = {
        f"tests/test_a.py::test_{index}": {"setup": 0.0, "call": index / 10, "teardown": 0.0} for index in range(15)
    }
    durations["tests/test_a.py::test_slow_unit"] = {"setup": 0.1, "call": UNIT_BUDGET_S + 0.5, "teardown": 0.0}
    # A shared fixture built in setup does not count against the test's own budget.
    durations["tests/test_a.py::test_first_to_build"] = {"setup": 20.0, "call": 0.1, "teardown": 0.0}
    durations["tests/test_b.py::test_long"] = {"setup": 0.0, "call": INTEGRATION_BUDGET_S + 1, "teardown": 0.0}
    durations["tests/test_b.py::test_within"] = {"setup": 0.0, "call": INTEGRATION_BUDGET_S - 1, "teardown": 0.0}
    integration = {"tests/test_b.py::test_long", "tests/test_b.py::test_within"}
    lines = time_report(durations, integration)
    slowest = lines[1:11]
    assert [line.split()[-1] for line in slowest[:4]] == [
        "tests/test_b.py::test_long",
        "tests/test_b.py::test_within",
        "tests/test_a.py::test_first_to_build",
        "tests/test_a.py::test_slow_unit",
    ]
    assert len(slowest) == 10 and all(line.startswith("  ") for line in slowest) and lines[11].startswith("unit tier")
    unit_total = sum(index / 10 for index in range(15)) + 0.1 + UNIT_BUDGET_S + 0.5 + 20.1
    assert lines[11] == f"unit tier: 17 tests, {unit_total:.1f} s of test time"
    assert lines[12] == f"integration tier: 2 tests, {2 * INTEGRATION_BUDGET_S:.1f} s of test time"
    assert lines[13:] == [
        f"OVER BUDGET (30 s): {INTEGRATION_BUDGET_S + 1:.1f} s  tests/test_b.py::test_long",
        f"OVER BUDGET (2 s): {UNIT_BUDGET_S + 0.5:.1f} s  tests/test_a.py::test_slow_unit",
    ]


def test_a_suite_within_budget_says_so():
    lines = time_report({"t::a": {"call": 1.0}}, set())
    assert lines[-1] == "no test over its budget (unit 2 s, integration 30 s)"
