"""`selfagent eval`: the suite's honesty on the real local stack, and its command and report.

For every task, the scripted model plays the task's known-good solution,
which must pass the task's checker, and its plausible wrong one, which must
fail it, each on its own session's desktop (real provisioner, actuator,
planner, gateway, Xvnc + Xfce desktops). The runs share one stack and go
four at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shlex
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfagent.cli import main as selfagent
from selfagent.eval.report import summarize, write
from selfagent.eval.runner import Runner, RunResult, Target
from selfagent.eval.suite import FIREFOX, SUITE, EvalTask, Step, done, shell
from selfagent.local import LocalStack
from tests.harness.api import computer, scripted_stack
from tests.harness.fakellm import FakeLLM, TaggedScripts

HOST = f"eval-{uuid.uuid4().hex[:8]}"
PARALLEL = 4

# A Firefox profile's history as Firefox keeps it (the tables and columns the
# checker reads), for machines whose native desktops have no Firefox: the
# image has it, the test machine may not.
_HISTORY = """
import os, sqlite3, sys
d = os.path.expanduser("~/.mozilla/firefox/standin.default-esr")
os.makedirs(d, exist_ok=True)
c = sqlite3.connect(os.path.join(d, "places.sqlite"))
c.executescript("CREATE TABLE IF NOT EXISTS moz_places (id INTEGER PRIMARY KEY, url TEXT);"
                "CREATE TABLE IF NOT EXISTS moz_historyvisits (id INTEGER PRIMARY KEY,"
                " place_id INTEGER, visit_date INTEGER);")
for n, page in enumerate(sys.argv[1:]):
    url = "file://" + os.path.expanduser("~/site/" + page)
    place = c.execute("INSERT INTO moz_places (url) VALUES (?)", (url,)).lastrowid
    c.execute("INSERT INTO moz_historyvisits (place_id, visit_date) VALUES (?, ?)", (place, n))
c.commit()
"""


def _visits(*pages: str) -> list[Step]:
    command = f"python3 -c {shlex.quote(_HISTORY)} " + " ".join(pages)
    return [shell(command), done()]


# What each Firefox task's solutions leave in the history.
_STAND_IN: dict[str, tuple[list[Step], list[Step]]] = {
    "firefox-follow-link": (
        _visits("guide.html", "chapter2.html"),
        _visits("guide.html", "chapter1.html"),
    ),
    "firefox-open-page": (_visits("chapter1.html"), _visits("chapter2.html")),
}


def _playable(task: EvalTask) -> EvalTask:
    if FIREFOX in task.apps and shutil.which(FIREFOX) is None:
        solution, wrong = _STAND_IN[task.id]
        return dataclasses.replace(task, apps=(), solution=solution, wrong=wrong)
    return task


@pytest.fixture(scope="module")
def router(fake_llm: FakeLLM) -> Iterator[TaggedScripts]:
    routes = TaggedScripts()
    fake_llm.reset(default=routes)
    yield routes
    fake_llm.reset()


@pytest.fixture(scope="module")
def eval_stack(fake_llm: FakeLLM, router: TaggedScripts) -> Iterator[LocalStack]:
    local = scripted_stack(
        fake_llm,
        "eval",
        "per_session",
        PROVISIONER_HOST_NAME=HOST,
        PROVISIONER_WARM="2",
        PROVISIONER_MAX_PER_HOST=str(PARALLEL),
        PROVISIONER_LEASE_WAIT="120",
    )
    local.start()
    yield local
    local.stop(remove=True)


def _tag(task: EvalTask, attempt: int) -> str:
    return f"{'good' if attempt == 0 else 'wrong'}-{task.id}"


@pytest.mark.desktop
@pytest.mark.timeout(900)
def test_every_task_passes_its_solution_and_fails_its_wrong_one(
    eval_stack: LocalStack, router: TaggedScripts, tmp_path: Path
) -> None:
    tasks = [_playable(task) for task in SUITE]
    for task in tasks:
        assert task.solution and task.wrong, f"{task.id} has no scripted solutions"
        router.scripts[_tag(task, 0)] = [computer(**step) for step in task.solution]
        router.scripts[_tag(task, 1)] = [computer(**step) for step in task.wrong]
    assert eval_stack.token is not None
    runner = Runner(
        Target(eval_stack.gateway_url, eval_stack.token, eval_stack.credentials("admin")),
        parallel=PARALLEL,
        prompt_of=lambda task, attempt: f"[{_tag(task, attempt)}] {task.instruction}",
    )
    # Attempt 0 plays the good solution, attempt 1 the wrong one.
    results = asyncio.run(runner.run(tasks, repeat=2))

    by_run = {(r.task, r.attempt): r for r in results}
    assert len(by_run) == 2 * len(tasks)
    problems: list[str] = []
    for task in tasks:
        good, wrong = by_run[(task.id, 0)], by_run[(task.id, 1)]
        if not good.passed:
            problems.append(f"{task.id}: the known-good solution failed: {good.reason}")
        if wrong.passed:
            problems.append(f"{task.id}: the wrong solution passed the checker")
        elif not wrong.reason.startswith("checker: "):
            # It must be the checker that says no, not a broken run.
            problems.append(f"{task.id}: the wrong run failed for another reason: {wrong.reason}")
        for run in (good, wrong):
            if run.agent_status != "succeeded" or run.steps != len(
                task.solution if run.attempt == 0 else task.wrong
            ):
                problems.append(
                    f"{task.id}#{run.attempt}: agent {run.agent_status!r}, {run.steps} steps"
                )
            if run.tokens <= 0:
                problems.append(f"{task.id}#{run.attempt}: no tokens counted")
    assert not problems, "\n".join(problems)
    # Each run had its own session, and closed it.
    assert len({r.session_id for r in results}) == len(results)

    json_path, html_path, text = write(tmp_path, results, {"model": "scripted"})
    data = json.loads(json_path.read_text())
    assert data["overall"]["runs"] == 2 * len(tasks)
    assert data["overall"]["passed"] == len(tasks)
    assert data["overall"]["failure_reasons"] == {"checker": len(tasks)}
    assert "<svg" in html_path.read_text()
    assert f"{len(tasks)}/{2 * len(tasks)} passed" in text


def test_the_suite_has_twenty_tasks_or_more_with_unique_ids() -> None:
    ids = [task.id for task in SUITE]
    assert len(ids) >= 20
    assert len(set(ids)) == len(ids)
    kinds = {task.category for task in SUITE}
    assert {"files", "windows", "settings", "browser"} <= kinds


def test_list_prints_one_task_a_line_and_tasks_filters(capsys: pytest.CaptureFixture[str]) -> None:
    assert selfagent(["eval", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [task.id for task in SUITE]
    assert selfagent(["eval", "--list", "--tasks", "settings,file-c*"]) == 0
    chosen = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    expected = [t.id for t in SUITE if t.category == "settings" or t.id.startswith("file-c")]
    assert chosen == expected and "file-create" in chosen and "workspaces" in chosen
    assert selfagent(["eval", "--list", "--tasks", "no-such-task"]) == 2


def test_summary_counts_repeats_and_failure_kinds() -> None:
    def run(task: str, attempt: int, passed: bool, reason: str = "") -> RunResult:
        return RunResult(
            task=task,
            category="files",
            attempt=attempt,
            passed=passed,
            reason=reason,
            steps=2 + attempt,
            tokens=100,
            wall_s=1.0 + attempt,
        )

    results = [
        run("a", 0, True),
        run("b", 0, False, "timeout: no file"),
        run("a", 1, False, "checker: wrong text"),
        run("b", 1, False, "agent failed (budget): no file"),
    ]
    tasks, overall = summarize(results)
    assert [(t.task, t.passed, t.runs) for t in tasks] == [("a", 1, 2), ("b", 0, 2)]
    assert tasks[0].steps_mean == 2.5 and tasks[0].wall_stdev > 0
    assert overall["success_rate"] == 0.25
    assert overall["success_rate_per_repeat"] == [0.5, 0.0]
    assert overall["failure_reasons"] == {"timeout": 1, "checker": 1, "agent failed": 1}
    assert overall["tokens_total"] == 400
