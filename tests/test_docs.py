"""The documentation holds to the code: every output the workflow declares is in the output map of
``pipelines/README.md`` under the rule that makes it, every module of ``pipelines/`` is named there, the
README stays short and every relative link of the docs resolves, and no user-facing file speaks of how the
code was developed (issue numbers, "the seed" for the article, the limits of a development machine).

The declared outputs come from Snakemake itself: the workflow is loaded through Snakemake's API (in a
subprocess, from a copy of the workflow files) and every rule object's output and log patterns are read,
so rules that the loaded profile never runs (the benchmarks, the rank traces) are covered too. The smoke
profile is loaded with the CPU benchmarks switched on, so that the ``table`` rule's wildcard lists every
table. The workflow's own smoke run (``tests/test_workflow.py``) checks the same words in what it writes.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

MAP_DOC = ROOT / "pipelines" / "README.md"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 160

# Words that say how the code was developed, not what it does. Each is a regular expression for `git grep -E -i`.
BANNED = [
    r"\bissue #?[0-9]+",  # issue numbers
    r"\bthe issue\b",  # "the target", "what the issue measured"
    r"the seed's",  # "the seed" for the article whose claims are tested
    r"seed_value",
    r"seed (article|paper|document)",
    r"\(seed: [0-9]",
    r"lent (H200|GPU|machine)",  # the development machine's limits
    r"briefly lent",
    r"MiB a command",
    r"one command can carry",
    r"development machine",
    r"this session",
    r"/work/(main|wt|shared|notes)",  # paths of the development machine
]

WORKFLOW_FILES = ["Snakefile", "pipelines", "environment.yml", "requirements.txt"]

# Prints {rule: {"output": [...], "log": [...]}} for the workflow in the current directory.
DECLARED_SCRIPT = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

config = {"profile": "smoke", "profiles": {"smoke": {"bench": {"enabled": True}}}}
with SnakemakeApi(OutputSettings(quiet=None)) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), config_settings=ConfigSettings(config=config),
                      snakefile=Path("Snakefile"))._workflow
    rules = {r.name: {"output": [str(f) for f in r.output], "log": [str(f) for f in r.log]} for r in wf.rules}
print("DECLARED " + json.dumps(rules))
"""

WILDCARD = re.compile(r"\{(\w+)(?:,([^{}]*))?\}")
ALTERNATION = re.compile(r"^[\w.-]+(\|[\w.-]+)*$")


@pytest.fixture(scope="module")
def declared(tmp_path_factory) -> dict[str, dict[str, list[str]]]:
    wd = tmp_path_factory.mktemp("wf_rules")
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, wd / name)
    r = run_cli("-c", DECLARED_SCRIPT, cwd=wd, timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("DECLARED ")), None)
    assert r.returncode == 0 and line, (r.stdout + r.stderr)[-3000:]
    rules = json.loads(line.removeprefix("DECLARED "))
    assert {"train", "collect", "figure", "table", "bench_optim", "trace_memory_ranks"} <= set(rules), sorted(rules)
    return rules


def normalise(pattern: str) -> list[str]:
    """A declared pattern with its wildcards as ``{name}``; a wildcard constrained to a list of names (the
    figures, the tables) is expanded into one path per name."""
    choices = []
    for m in WILDCARD.finditer(pattern):
        constraint = m.group(2)
        if constraint and ALTERNATION.match(constraint):
            choices.append(constraint.split("|"))
        else:
            choices.append([f"{{{m.group(1)}}}"])
    texts = WILDCARD.split(pattern)[::3]  # the text around the wildcards (split yields text, name, constraint)
    out = []
    for combo in itertools.product(*choices):
        out.append(texts[0] + "".join(c + t for c, t in zip(combo, texts[1:])))
    return out


def map_regex(pattern: str) -> re.Pattern:
    """A map pattern as a regex: ``{a,b}`` is one of the alternatives, ``{name}`` any one path segment."""
    out, pos = [], 0
    for m in re.finditer(r"\{([^{}]*)\}", pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        body = m.group(1)
        out.append("(?:" + "|".join(re.escape(a) for a in body.split(",")) + ")" if "," in body else r"[^/]+")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


def output_map() -> list[dict]:
    """The rows of the output map: file patterns, the rule (None for files no rule makes), and whether the
    rule's job writes the file without declaring it."""
    text = MAP_DOC.read_text(encoding="utf-8").split("## The output map", 1)[1]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 2 or cells[0] in ("file", "") or set(cells[0]) <= set("-: "):
            continue
        files = [f for f in re.findall(r"`([^`]+)`", cells[0]) if f.startswith(("results/", "reports/"))]
        rule = re.match(r"`(\w+)`", cells[1])
        rows.append(
            {
                "files": files,
                "rule": rule.group(1) if rule else None,
                "line": line,
                "undeclared": "undeclared" in cells[1],
                "rest": " ".join(cells[2:]),
            }
        )
    return rows


def test_every_declared_output_and_log_is_in_the_output_map_under_its_rule(declared):
    rows = output_map()
    by_rule: dict[str, list[re.Pattern]] = {}
    for row in rows:
        if row["rule"]:
            by_rule.setdefault(row["rule"], []).extend(map_regex(f) for f in row["files"])
    missing = []
    for rule, files in declared.items():
        for pattern in files["output"] + files["log"]:
            for path in normalise(pattern):
                if not any(rx.fullmatch(path) for rx in by_rule.get(rule, [])):
                    missing.append(f"{rule}: {path}")
    assert not missing, "not in the output map of pipelines/README.md:\n" + "\n".join(missing)


def test_every_map_row_names_a_rule_that_makes_that_file(declared):
    """The reverse: no stale row. A row's rule exists, and unless the row says the file is undeclared, the
    rule declares a file the row's pattern matches."""
    stale = []
    for row in output_map():
        if row["rule"] is None:
            assert "—" in row["line"], row["line"]  # a file no rule makes says so
            continue
        if row["rule"] not in declared:
            stale.append(f"no rule {row['rule']!r}: {row['line']}")
            continue
        if row["undeclared"]:
            continue
        made = [
            p for pattern in declared[row["rule"]]["output"] + declared[row["rule"]]["log"] for p in normalise(pattern)
        ]
        for f in row["files"]:
            if not any(map_regex(f).fullmatch(p) for p in made):
                stale.append(f"{row['rule']} declares nothing like {f}")
    assert not stale, "\n".join(stale)


def test_output_map_names_only_code_that_exists():
    gone = []
    for row in output_map():
        for token in re.findall(r"`([^`]+)`", row["rest"]):
            if "/" in token and not re.search(r"[{*<]", token) and not token.startswith(("results/", "reports/")):
                if not (ROOT / token.split()[0]).exists():
                    gone.append(token)
    assert not gone, gone


def test_every_module_of_the_workflow_is_named_in_its_readme():
    text = MAP_DOC.read_text(encoding="utf-8")
    base = ROOT / "pipelines"
    modules = sorted(
        p.relative_to(base).as_posix()
        for ext in ("*.py", "*.smk", "*.sh")
        for p in base.rglob(ext)
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    )
    assert len(modules) > 30
    unnamed = [m for m in modules if m not in text]
    assert not unnamed, f"modules not named in pipelines/README.md: {unnamed}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def doc_links(path: Path) -> list[tuple[str, str]]:
    """(target, anchor) of every markdown link in ``path`` outside code blocks."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [tuple((t.split("#", 1) + [""])[:2]) for t in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)]


def test_readme_is_short_and_links_every_docs_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    linked = {(README.parent / target).resolve() for target, _ in doc_links(README) if target}
    pages = {p.resolve() for p in DOCS.glob("*.md")}
    assert len(pages) >= 7 and not pages - linked, sorted(str(p) for p in pages - linked)


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    broken = []
    for doc in [README, MAP_DOC, *sorted(DOCS.glob("*.md"))]:
        for target, anchor in doc_links(doc):
            if re.match(r"^[a-z]+:", target):
                continue
            path = (doc.parent / target).resolve() if target else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
                continue
            if anchor and path.suffix == ".md":
                headings = re.findall(
                    r"^#+ (.*)$", re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S), flags=re.M
                )
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{doc.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, broken


def _git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_docs_pages_named_in_the_code_exist():
    """A pointer such as 'see docs/gpu.md' in a skip reason or a comment names a page that exists."""
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    r = _git("grep", "-h", "-o", "-E", r"docs/[A-Za-z0-9_-]+\.md", "--", ".", ":!tests")
    named = set(r.stdout.split())
    assert "docs/gpu.md" in named
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, missing


def banned_words_in(text: str) -> list[str]:
    """Lines of ``text`` with a banned word (for generated files: the smoke workflow test uses it)."""
    return [ln.strip() for ln in text.splitlines() for w in BANNED if re.search(w, ln, flags=re.I)]


def test_no_words_about_how_the_code_was_developed():
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    args = ["grep", "-n", "-I", "-i", "-E"]
    for w in BANNED:
        args += ["-e", w]
    r = _git(*args, "--", ".", ":!tests")
    assert r.returncode in (0, 1), r.stderr
    assert r.returncode == 1, "words about how the code was developed:\n" + r.stdout[-4000:]


def test_the_words_check_finds_what_it_bans():
    """The check itself can fail: each banned pattern matches the phrase it is there for."""
    for phrase in (
        "see issue 12",
        "the seed's claim",
        "seed_value",
        "on the lent H200",
        "64 MiB a command",
        "measured on the development machine",
        "the issue's target",
        "(seed: 16)",
        "in this session",
        "/work/shared/DESIGN.md",
    ):
        assert banned_words_in(phrase), phrase
    for fine in ("three seeds", "the article's claims", "seed 0", "tissue 3", "a lent lr"):
        assert not banned_words_in(fine), fine
