"""What the README and docs/ state about the code, read from the code, so that it cannot drift (issue 28): the doc
list, the keys a resume may change, the test tiers' markers, where a test file lives, the registered options; and
`semdl train --help`."""

from __future__ import annotations

import re
from pathlib import Path

from semdl.cli import main
from semdl.options import registries
from semdl.pipeline.runs import RESUMABLE_KEYS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")


def links(page: Path) -> set[Path]:
    """The local files a Markdown page links to, resolved."""
    return {(page.parent / target).resolve() for target in LINK.findall(page.read_text()) if "://" not in target}


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def test_the_readme_is_a_short_guide_that_reaches_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) < 350
    linked = links(README)
    for page in sorted(DOCS.glob("*.md")):
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"
    for target in linked:
        if target.parent == DOCS.resolve() and target.name != "results.md":  # results.md: the lead's page, coming
            assert target.is_file(), f"README.md links {target.name}, which does not exist"
    # The quick start's two commands, literally.
    assert "pip install -e . && semdl train" in text and 'pip install -e ".[test]" && pytest' in text
    # CPU-only torch comes before semdl in the install path.
    assert text.index("download.pytorch.org/whl/cpu") < text.index("pip install -e . && semdl train")


def prose_sentences(page: Path) -> list[str]:
    """The sentences of a page's prose (code blocks, indented examples, tables and headings left out), each with its
    whitespace collapsed; only those of 10 words or more, which a page cannot share with another by chance."""
    text = re.sub(r"```.*?```", " ", page.read_text(), flags=re.S)
    prose = " ".join(line for line in text.splitlines() if not line.startswith(("    ", "|", "#", "<!--")))
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", re.sub(r"\s+", " ", prose))
    return [sentence for sentence in sentences if len(sentence.split()) >= 10]


def test_no_sentence_appears_twice_in_the_readme_and_the_docs():
    """Each thing is said once, where it belongs, and linked from elsewhere (issue 28)."""
    where: dict[str, list[str]] = {}
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for sentence in prose_sentences(page):
            where.setdefault(sentence, []).append(page.name)
    repeated = {sentence[:120]: pages for sentence, pages in where.items() if len(pages) > 1}
    assert not repeated, repeated
    assert len(where) > 500  # the pages' prose was found: the README and docs hold about 700 such sentences


def test_the_keys_a_resume_may_change_are_the_codes():
    """docs/robustness.md lists them in one sentence; each of its keys is one of RESUMABLE_KEYS and back."""
    text = " ".join(line.strip() for line in (DOCS / "robustness.md").read_text().splitlines())
    sentence = re.search(r"Only (`train\.rounds`.*?) may change on resume", text).group(1)
    spelled = {"eval.*": "eval.", "sim.*": "sim.", "comm=<name>": "comm.name"}
    stated = {spelled.get(key, key) for key in backticked(sentence) if "=" not in key or key in spelled}
    assert stated == set(RESUMABLE_KEYS)


def test_the_test_tiers_named_in_the_docs_are_the_markers():
    # pyproject.toml's markers list, one '"name: what it is"' line each (read as text: tomllib needs Python 3.11).
    block = re.search(r"^markers = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL)
    names = set(re.findall(r'^\s*"(\w+):', block.group(1), re.MULTILINE))
    assert "integration" in names
    stated = set(re.findall(r'pytest -m "not (\w+)"', (DOCS / "development.md").read_text()))
    assert stated and stated <= names


def module_test_files() -> set[str]:
    """The names a module file of tests/ may have: test_<X>.py, X a module or package of semdl with any number of its
    packages in front (test_topology.py, test_network_topology.py), or a script of scripts/ without its suffix."""
    names = set()
    for path in (ROOT / "semdl").rglob("*.py"):
        parts = path.relative_to(ROOT / "semdl").with_suffix("").parts
        if parts[-1] == "__init__":  # the package itself
            parts = parts[:-1]
        names |= {"test_" + "_".join(parts[first:]) + ".py" for first in range(len(parts))}
    return names | {f"test_{script.stem}.py" for script in (ROOT / "scripts").iterdir() if script.is_file()}


def scenario_files() -> set[str]:
    """The test files of docs/development.md's scenario table (its section "Where a test lives")."""
    text = (DOCS / "development.md").read_text()
    section = re.search(r"^## Where a test lives$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL).group(1)
    return set(re.findall(r"^\| `(test_\w+\.py)` \| .+ \|$", section, re.MULTILINE))


def test_every_test_file_is_named_after_its_module_or_listed_as_a_scenario():
    """docs/development.md's rule: tests/test_<X>.py tests the module, package or script X, or is a row of the
    scenario table there; and every row names a file of tests/."""
    files = {path.name for path in (ROOT / "tests").glob("test_*.py")}
    scenarios = scenario_files()
    assert scenarios, "docs/development.md's section 'Where a test lives' lists no scenario file"
    unplaced = files - module_test_files() - scenarios
    assert not unplaced, f"named after no module or script of semdl, and no scenario of docs/development.md: {unplaced}"
    assert scenarios <= files, f"docs/development.md lists scenario files that tests/ lacks: {scenarios - files}"


def conf_options(group: str) -> set[str]:
    """The options of a group that ship as YAML files (model=paper_hetero10, the published partitions)."""
    return {path.stem for path in (ROOT / "semdl" / "conf" / group).glob("*.yaml")}


def semdl_options(registry) -> set[str]:
    """The options semdl itself registers (other tests in this process may have added their own)."""
    return {
        name
        for name in registry.names()
        if (config := registry.get(name).config) is None or type(config).__module__.split(".")[0] == "semdl"
    }


def test_the_usage_page_names_every_registered_option():
    """docs/usage.md's table of config groups names every option each registry holds."""
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(\w+)` \| (.*) \|$", (DOCS / "usage.md").read_text(), re.MULTILINE)
    }
    checked = 0
    for group, registry in registries().items():
        if group not in rows:
            continue  # classifiers are listed with the evaluation, not as a config group
        stated = set(backticked(rows[group]))
        missing = (semdl_options(registry) | conf_options(group)) - stated
        assert not missing, f"docs/usage.md's {group} row lacks {sorted(missing)}"
        checked += 1
    assert checked == 6  # data, partition, model, topology, solver, logger


def name_lines(page: str) -> dict[str, str]:
    """Each top-level config group's `  name:` line of the help page's config, by group."""
    lines, group = {}, None
    for line in page.splitlines():
        if re.match(r"^\w+:", line):
            group = line.split(":")[0]
        elif line.startswith("  name:") and group is not None:
            lines.setdefault(group, line)
    return lines


def test_train_help_hides_internal_groups_and_lists_every_option_from_the_registry(capsys):
    main(["train", "--help"])
    page = capsys.readouterr().out
    assert "solver_settings" not in page
    named = name_lines(page)
    checked = 0
    for group, registry in registries().items():
        if group not in named:
            continue  # classifiers: eval.classifiers lists them
        listed = re.search(r"\(one of: ([^)]*)\)$", named[group]).group(1).split(", ")
        assert set(listed) >= semdl_options(registry) | conf_options(group), group
        assert set(listed) <= set(registry.names()) | conf_options(group), group
        assert listed == sorted(listed)
        checked += 1
    assert checked == 6
