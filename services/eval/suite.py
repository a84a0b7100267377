"""The built-in task suite: OSWorld-style desktop tasks with a setup, an instruction, a checker.

A task's ``setup`` is a shell script run through the desktop's exec endpoint
before the instruction is given; its ``check`` inspects the desktop through
the same endpoint afterwards (file contents, window titles with xdotool,
Xfce and GSettings values, Firefox's history) and never trusts what the
agent said. ``solution`` and ``wrong`` are action scripts for the scripted
model: the first must pass the checker and the second, a plausible mistake,
must fail it (``tests/test_eval.py`` plays both for every task), so a checker
that accepts anything, or nothing, is caught.

Only what the sandbox image installs is used: Xfce, xfce4-terminal,
Mousepad, Thunar, Firefox ESR, xdotool, python3.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .desktop import Desktop

Step = dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


Check = Callable[["Desktop"], Awaitable[Verdict]]


@dataclass(frozen=True)
class EvalTask:
    id: str
    category: str
    instruction: str
    check: Check
    setup: str = ""
    # The task's budget: the planner stops at max_steps; eval stops it at timeout.
    max_steps: int = 15
    timeout: float = 300.0
    # Programs the task needs on the desktop beyond the Xfce session.
    apps: tuple[str, ...] = ()
    solution: list[Step] = field(default_factory=list)
    wrong: list[Step] = field(default_factory=list)


def _pass(reason: str = "as expected") -> Verdict:
    return Verdict(True, reason)


def _fail(reason: str) -> Verdict:
    return Verdict(False, reason)


def shell(command: str) -> Step:
    return {"action": "shell", "command": command}


def key(keys: str) -> Step:
    return {"action": "key", "keys": keys}


def type_text(text: str) -> Step:
    return {"action": "type", "text": text}


def wait(seconds: float) -> Step:
    return {"action": "wait", "seconds": seconds}


def done(message: str = "Done.") -> Step:
    return {"action": "done", "message": message}


def background(command: str) -> str:
    """A GUI program started from a shell command that returns at once."""
    return f"({command} >/dev/null 2>&1 &)"


def _text(data: str) -> str:
    """Shell that writes ``data`` verbatim to stdout (for setups)."""
    return f"printf %s {shlex.quote(data)}"


# --- checkers ----------------------------------------------------------------


def file_equals(path: str, expected: str) -> Check:
    """The file holds ``expected`` (a trailing newline either way)."""

    async def check(desk: Desktop) -> Verdict:
        text = await desk.read(path)
        if text is None:
            return _fail(f"{path} does not exist")
        if text.rstrip("\n") != expected.rstrip("\n"):
            return _fail(f"{path} holds {text[:120]!r}, expected {expected[:120]!r}")
        return _pass()

    return check


def file_number(path: str, expected: float, tolerance: float = 0.005) -> Check:
    async def check(desk: Desktop) -> Verdict:
        text = await desk.read(path)
        if text is None:
            return _fail(f"{path} does not exist")
        try:
            value = float(text.strip().replace(",", ""))
        except ValueError:
            return _fail(f"{path} holds {text[:80]!r}, not a number")
        if abs(value - expected) > tolerance:
            return _fail(f"{path} holds {value}, expected {expected}")
        return _pass()

    return check


def all_of(*checks: Check) -> Check:
    async def check(desk: Desktop) -> Verdict:
        for part in checks:
            verdict = await part(desk)
            if not verdict.ok:
                return verdict
        return _pass()

    return check


def exists(path: str, kind: str = "e") -> Check:
    async def check(desk: Desktop) -> Verdict:
        if await desk.exists(path, kind):
            return _pass()
        what = {"d": "a folder", "f": "a file", "x": "executable"}.get(kind, "there")
        return _fail(f"{path} is not {what}")

    return check


def missing(path: str) -> Check:
    async def check(desk: Desktop) -> Verdict:
        if await desk.exists(path):
            return _fail(f"{path} should be gone but exists")
        return _pass()

    return check


def folder_holds(path: str, names: set[str]) -> Check:
    """The folder's entries are exactly ``names``."""

    async def check(desk: Desktop) -> Verdict:
        result = await desk.sh(f"ls -A1 -- {shlex.quote(desk.path(path))}")
        if result.exit_code != 0:
            return _fail(f"{path} is not a folder")
        found = set(result.stdout.split())
        if found != names:
            return _fail(f"{path} holds {sorted(found)}, expected {sorted(names)}")
        return _pass()

    return check


def window_titled(title: str, exact: bool = True, present: bool = True) -> Check:
    async def check(desk: Desktop) -> Verdict:
        titles = await desk.windows()
        there = any((t == title) if exact else (title in t) for t in titles)
        if there == present:
            return _pass()
        how = "titled" if exact else "with a title containing"
        state = "no visible window" if present else "still a visible window"
        return _fail(f"{state} {how} {title!r} (windows: {titles})")

    return check


def active_window(title: str) -> Check:
    async def check(desk: Desktop) -> Verdict:
        active = await desk.active_window()
        if active == title:
            return _pass()
        return _fail(f"the active window is {active!r}, expected {title!r}")

    return check


def xfconf_is(channel: str, prop: str, expected: str) -> Check:
    async def check(desk: Desktop) -> Verdict:
        value = await desk.xfconf(channel, prop)
        if value != expected:
            return _fail(f"xfconf {channel} {prop} is {value!r}, expected {expected!r}")
        return _pass()

    return check


def gsettings_is(schema: str, key_name: str, expected: str) -> Check:
    async def check(desk: Desktop) -> Verdict:
        value = await desk.gsettings(schema, key_name)
        if value != expected:
            return _fail(f"gsettings {schema} {key_name} is {value!r}, expected {expected!r}")
        return _pass()

    return check


def firefox_visited(suffix: str) -> Check:
    async def check(desk: Desktop) -> Verdict:
        urls = await desk.firefox_history()
        if any(url.endswith(suffix) for url in urls):
            return _pass()
        return _fail(f"Firefox has no visit to a URL ending in {suffix!r} (visited: {urls[-5:]})")

    return check


def json_file(path: str, expected: dict[str, Any]) -> Check:
    async def check(desk: Desktop) -> Verdict:
        text = await desk.read(path)
        if text is None:
            return _fail(f"{path} does not exist")
        try:
            data = json.loads(text)
        except ValueError as exc:
            return _fail(f"{path} is not valid JSON: {exc}")
        if data != expected:
            return _fail(f"{path} holds {data}, expected {expected}")
        return _pass()

    return check


def tar_gz_holds(path: str, members: set[str]) -> Check:
    """A gzip-compressed tar whose member paths end with each of ``members``."""
    lister = (
        "import json, sys, tarfile\n"
        "with tarfile.open(sys.argv[1], 'r:gz') as t: print(json.dumps(t.getnames()))"
    )

    async def check(desk: Desktop) -> Verdict:
        result = await desk.sh(f"python3 -c {shlex.quote(lister)} {shlex.quote(desk.path(path))}")
        if result.exit_code != 0:
            return _fail(f"{path} is not a readable .tar.gz: {result.stderr.strip()[-160:]}")
        names = [n.removeprefix("./") for n in json.loads(result.stdout)]
        lacking = sorted(m for m in members if not any(n.endswith(m) for n in names))
        if lacking:
            return _fail(f"{path} lacks {lacking} (holds {names[:10]})")
        return _pass()

    return check


def lines_sorted(path: str, original: list[str]) -> Check:
    async def check(desk: Desktop) -> Verdict:
        text = await desk.read(path)
        if text is None:
            return _fail(f"{path} does not exist")
        lines = [line for line in text.splitlines() if line.strip()]
        if lines != sorted(original):
            return _fail(f"{path} lines are {lines}, expected {sorted(original)}")
        return _pass()

    return check


# --- the suite ---------------------------------------------------------------

NAMES = ["Mallory", "alice", "Dave", "Carol", "bob", "Eve"]
LOG_LINES = [
    *("INFO start", "ERROR disk full", "INFO retry", "ERROR disk full", "WARN slow"),
    *("ERROR timeout", "INFO no error here", "ERROR refused", "INFO error budget ok"),
    *("ERROR refused", "DEBUG error-free", "ERROR bad header", "INFO done"),
]
SALES = (
    "date,item,amount\n2024-01-02,pens,120.25\n2024-01-05,paper,300\n"
    "2024-01-09,ink,79.75\n2024-01-12,desk,734.5\n"
)
GUIDE = (
    "<html><head><title>Guide</title></head><body><h1>Guide</h1>"
    '<p><a href="chapter1.html">Chapter 1</a></p><p><a href="chapter2.html">Chapter 2</a></p>'
    "</body></html>"
)
CHAPTER = "<html><head><title>{0}</title></head><body><h1>{0}</h1></body></html>"
FIREFOX = "firefox-esr"

SUITE: list[EvalTask] = [
    EvalTask(
        id="file-create",
        category="files",
        instruction="Create a text file ~/Desktop/hello.txt whose only content is the line: "
        "Hello, world",
        check=file_equals("Desktop/hello.txt", "Hello, world"),
        solution=[
            shell("mkdir -p ~/Desktop; printf 'Hello, world\\n' > ~/Desktop/hello.txt"),
            done(),
        ],
        wrong=[shell("mkdir -p ~/Desktop; printf 'Hello world\\n' > ~/Desktop/hello.txt"), done()],
    ),
    EvalTask(
        id="file-rename",
        category="files",
        instruction="Rename the file ~/Documents/draft.txt to final.txt, in the same folder.",
        setup="mkdir -p ~/Documents && "
        + _text("quarterly numbers\n")
        + " > ~/Documents/draft.txt",
        check=all_of(
            file_equals("Documents/final.txt", "quarterly numbers"), missing("Documents/draft.txt")
        ),
        solution=[shell("mv ~/Documents/draft.txt ~/Documents/final.txt"), done()],
        wrong=[shell("cp ~/Documents/draft.txt ~/Documents/final.txt"), done()],
    ),
    EvalTask(
        id="file-move-png",
        category="files",
        instruction="Move every .png file from ~/Downloads into a new folder ~/Pictures/screens. "
        "Leave the other files in ~/Downloads.",
        setup="mkdir -p ~/Downloads && cd ~/Downloads && "
        "for f in a.png b.png c.jpg notes.txt; do echo $f > $f; done",
        check=all_of(
            folder_holds("Pictures/screens", {"a.png", "b.png"}),
            folder_holds("Downloads", {"c.jpg", "notes.txt"}),
        ),
        solution=[
            shell("mkdir -p ~/Pictures/screens && mv ~/Downloads/*.png ~/Pictures/screens/"),
            done(),
        ],
        wrong=[
            shell("mkdir -p ~/Pictures/screens && mv ~/Downloads/* ~/Pictures/screens/"),
            done(),
        ],
    ),
    EvalTask(
        id="file-delete-tmp",
        category="files",
        instruction="Delete all .tmp files in ~/work, and nothing else.",
        setup="mkdir -p ~/work && cd ~/work && for f in x.tmp y.tmp keep.txt data.csv; do "
        "echo $f > $f; done",
        check=folder_holds("work", {"keep.txt", "data.csv"}),
        solution=[shell("rm ~/work/*.tmp"), done()],
        wrong=[shell("rm ~/work/*.tmp ~/work/data.csv"), done()],
    ),
    EvalTask(
        id="csv-total",
        category="files",
        instruction="Add up the amount column of ~/sales.csv and write the total (just the number) "
        "to ~/total.txt.",
        setup=_text(SALES) + " > ~/sales.csv",
        check=file_number("total.txt", 1234.5),
        solution=[
            shell("awk -F, 'NR>1 {s+=$3} END {print s}' ~/sales.csv > ~/total.txt"),
            done("The total is 1234.5."),
        ],
        # Off by one row: the header skipped twice.
        wrong=[shell("awk -F, 'NR>2 {s+=$3} END {print s}' ~/sales.csv > ~/total.txt"), done()],
    ),
    EvalTask(
        id="sort-lines",
        category="files",
        instruction="Sort the lines of ~/names.txt alphabetically (plain byte order, as `sort` "
        "does with LC_ALL=C) and save the result in the same file.",
        setup=_text("\n".join(NAMES) + "\n") + " > ~/names.txt",
        check=lines_sorted("names.txt", NAMES),
        solution=[shell("LC_ALL=C sort -o ~/names.txt ~/names.txt"), done()],
        wrong=[shell("LC_ALL=C sort -f -o ~/names.txt ~/names.txt"), done()],
    ),
    EvalTask(
        id="replace-word",
        category="files",
        instruction="In ~/letter.txt replace every 'colour' with 'color'; change nothing else.",
        setup=_text("The colour of the sky and the colour of the sea.\nMy favourite colour.\n")
        + " > ~/letter.txt",
        check=file_equals(
            "letter.txt", "The color of the sky and the color of the sea.\nMy favourite color.\n"
        ),
        solution=[shell("sed -i 's/colour/color/g' ~/letter.txt"), done()],
        # Only the first match on each line.
        wrong=[shell("sed -i 's/colour/color/' ~/letter.txt"), done()],
    ),
    EvalTask(
        id="json-port",
        category="files",
        instruction="In ~/app/config.json set port to 9090; keep the other settings as they are.",
        setup="mkdir -p ~/app && "
        + _text('{"name": "demo", "port": 8000, "debug": false}\n')
        + " > ~/app/config.json",
        check=json_file("app/config.json", {"name": "demo", "port": 9090, "debug": False}),
        solution=[shell("sed -i 's/8000/9090/' ~/app/config.json"), done()],
        wrong=[shell("""echo '{"port": 9090}' > ~/app/config.json"""), done()],
    ),
    EvalTask(
        id="make-dirs",
        category="files",
        instruction="Create the folders ~/projects/alpha/src and ~/projects/beta/src.",
        check=all_of(exists("projects/alpha/src", "d"), exists("projects/beta/src", "d")),
        solution=[shell("mkdir -p ~/projects/alpha/src ~/projects/beta/src"), done()],
        wrong=[shell("mkdir -p ~/projects/alpha/src ~/projects/beta"), done()],
    ),
    EvalTask(
        id="archive-notes",
        category="files",
        instruction="Pack the folder ~/notes into a gzip-compressed tar archive ~/backup.tar.gz.",
        setup="mkdir -p ~/notes && echo one > ~/notes/a.md && echo two > ~/notes/b.md",
        check=tar_gz_holds("backup.tar.gz", {"notes/a.md", "notes/b.md"}),
        solution=[shell("cd ~ && tar czf backup.tar.gz notes"), done()],
        # A tar without compression, under the name of a compressed one.
        wrong=[shell("cd ~ && tar cf backup.tar.gz notes"), done()],
    ),
    EvalTask(
        id="count-errors",
        category="files",
        instruction="Count the lines of ~/app.log that contain the word ERROR (in capitals) and "
        "write just that number to ~/errors.txt.",
        setup=_text("\n".join(LOG_LINES) + "\n") + " > ~/app.log",
        check=file_number("errors.txt", sum("ERROR" in line for line in LOG_LINES)),
        solution=[shell("grep -c ERROR ~/app.log > ~/errors.txt"), done()],
        wrong=[shell("grep -ci error ~/app.log > ~/errors.txt"), done()],
    ),
    EvalTask(
        id="chmod-script",
        category="files",
        instruction="Make the script ~/run.sh executable; do not change its contents.",
        setup=_text("#!/bin/sh\necho running\n") + " > ~/run.sh && chmod 644 ~/run.sh",
        check=all_of(exists("run.sh", "x"), file_equals("run.sh", "#!/bin/sh\necho running\n")),
        solution=[shell("chmod +x ~/run.sh"), done()],
        wrong=[shell("chmod 644 ~/run.sh && echo 'chmod +x run.sh' >> ~/run.sh"), done()],
    ),
    EvalTask(
        id="mousepad-append",
        category="apps",
        instruction="Open ~/todo.txt in Mousepad, add a line 'buy milk' at the end of the list "
        "and save the file.",
        setup=_text("call mom\npay rent\n") + " > ~/todo.txt",
        check=file_equals("todo.txt", "call mom\npay rent\nbuy milk"),
        solution=[
            shell(background("mousepad ~/todo.txt") + "; sleep 2"),
            key("ctrl+End"),
            type_text("buy milk"),
            key("ctrl+s"),
            wait(1),
            done(),
        ],
        # Typed at the top instead of the end.
        wrong=[
            shell(background("mousepad ~/todo.txt") + "; sleep 2"),
            key("ctrl+Home"),
            type_text("buy milk"),
            key("ctrl+s"),
            wait(1),
            done(),
        ],
    ),
    EvalTask(
        id="mousepad-open",
        category="windows",
        instruction="Open ~/report.txt in Mousepad and leave its window open.",
        setup="echo 'Q3 report' > ~/report.txt && echo 'misc' > ~/notes.txt",
        check=window_titled("report.txt - Mousepad", exact=False),
        solution=[shell(background("mousepad ~/report.txt") + "; sleep 2"), done()],
        wrong=[shell(background("mousepad ~/notes.txt") + "; sleep 2"), done()],
    ),
    EvalTask(
        id="thunar-open-folder",
        category="windows",
        instruction="Open the folder ~/Music in the file manager and leave it open.",
        setup="mkdir -p ~/Music/albums",
        check=window_titled("Music - Thunar"),
        solution=[shell(background("thunar ~/Music") + "; sleep 2"), done()],
        wrong=[shell(background("thunar ~/Music/albums") + "; sleep 2"), done()],
    ),
    EvalTask(
        id="terminal-title",
        category="windows",
        instruction="Open a terminal window whose title is build-logs and leave it open.",
        check=window_titled("build-logs"),
        solution=[shell(background("xfce4-terminal --title build-logs") + "; sleep 2"), done()],
        wrong=[shell(background("xfce4-terminal --title 'build logs'") + "; sleep 2"), done()],
    ),
    EvalTask(
        id="close-window",
        category="windows",
        instruction="Close the file manager window that shows the Videos folder; keep the one "
        "showing Music open.",
        setup="mkdir -p ~/Music ~/Videos && "
        + background("thunar ~/Music")
        + " && sleep 1.5 && "
        + background("thunar ~/Videos")
        + " && sleep 2",
        check=all_of(
            window_titled("Videos - Thunar", present=False), window_titled("Music - Thunar")
        ),
        solution=[
            shell("xdotool search --name '^Videos - Thunar$' windowactivate --sync"),
            key("alt+F4"),
            wait(1),
            done(),
        ],
        wrong=[
            shell("xdotool search --name '^Music - Thunar$' windowactivate --sync"),
            key("alt+F4"),
            wait(1),
            done(),
        ],
    ),
    EvalTask(
        id="focus-window",
        category="windows",
        instruction="Bring the file manager window showing the Documents folder to the front.",
        setup="mkdir -p ~/Documents ~/Downloads && "
        + background("thunar ~/Documents")
        + " && sleep 1.5 && "
        + background("thunar ~/Downloads")
        + " && sleep 2",
        check=active_window("Documents - Thunar"),
        solution=[
            shell("xdotool search --name '^Documents - Thunar$' windowactivate --sync"),
            done(),
        ],
        wrong=[done("The Documents window is open.")],
    ),
    EvalTask(
        id="workspaces",
        category="settings",
        instruction="Set the number of workspaces of the desktop to 2.",
        check=xfconf_is("xfwm4", "/general/workspace_count", "2"),
        solution=[shell("xfconf-query -c xfwm4 -p /general/workspace_count -s 2"), done()],
        wrong=[shell("xfconf-query -c xfwm4 -p /general/workspace_count -s 3"), done()],
    ),
    EvalTask(
        id="mousepad-line-numbers",
        category="settings",
        instruction="Make Mousepad show line numbers.",
        check=gsettings_is("org.xfce.mousepad.preferences.view", "show-line-numbers", "true"),
        solution=[
            shell("gsettings set org.xfce.mousepad.preferences.view show-line-numbers true"),
            done(),
        ],
        wrong=[
            shell("gsettings set org.xfce.mousepad.preferences.view show-right-margin true"),
            done(),
        ],
    ),
    EvalTask(
        id="thunar-hidden-files",
        category="settings",
        instruction="Make the file manager show hidden files.",
        check=xfconf_is("thunar", "/last-show-hidden", "true"),
        solution=[
            shell(background("thunar ~") + "; sleep 2"),
            key("ctrl+h"),
            wait(1),
            done(),
        ],
        wrong=[
            shell(background("thunar ~") + "; sleep 2"),
            key("ctrl+l"),
            wait(1),
            done(),
        ],
    ),
    EvalTask(
        id="terminal-scrollback",
        category="settings",
        instruction="Set the terminal's scrollback to 5000 lines.",
        check=xfconf_is("xfce4-terminal", "/scrolling-lines", "5000"),
        solution=[
            shell("xfconf-query -c xfce4-terminal -p /scrolling-lines -n -t uint -s 5000"),
            done(),
        ],
        wrong=[
            shell("xfconf-query -c xfce4-terminal -p /scrolling-lines -n -t uint -s 500"),
            done(),
        ],
    ),
    EvalTask(
        id="firefox-follow-link",
        category="browser",
        instruction="Open the page ~/site/guide.html in Firefox and follow its 'Chapter 2' link.",
        setup="mkdir -p ~/site && "
        + _text(GUIDE)
        + " > ~/site/guide.html && "
        + " && ".join(
            _text(CHAPTER.format(f"Chapter {n}")) + f" > ~/site/chapter{n}.html" for n in (1, 2)
        ),
        check=firefox_visited("/site/chapter2.html"),
        apps=(FIREFOX,),
        solution=[
            shell(background(f'{FIREFOX} "file://$HOME/site/guide.html"') + "; sleep 8"),
            shell(background(f'{FIREFOX} "file://$HOME/site/chapter2.html"') + "; sleep 4"),
            done(),
        ],
        wrong=[
            shell(background(f'{FIREFOX} "file://$HOME/site/guide.html"') + "; sleep 8"),
            shell(background(f'{FIREFOX} "file://$HOME/site/chapter1.html"') + "; sleep 4"),
            done(),
        ],
    ),
    EvalTask(
        id="firefox-open-page",
        category="browser",
        instruction="Open the page ~/site/chapter1.html in Firefox.",
        setup="mkdir -p ~/site && "
        + " && ".join(
            _text(CHAPTER.format(f"Chapter {n}")) + f" > ~/site/chapter{n}.html" for n in (1, 2)
        ),
        check=firefox_visited("/site/chapter1.html"),
        apps=(FIREFOX,),
        solution=[
            shell(background(f'{FIREFOX} "file://$HOME/site/chapter1.html"') + "; sleep 8"),
            done(),
        ],
        wrong=[
            shell(background(f'{FIREFOX} "file://$HOME/site/chapter2.html"') + "; sleep 8"),
            done(),
        ],
    ),
]


def select(patterns: list[str] | None) -> list[EvalTask]:
    """The tasks whose id or category matches one of ``patterns`` (shell globs); all without."""
    from fnmatch import fnmatchcase

    if not patterns:
        return list(SUITE)
    chosen = [
        task
        for task in SUITE
        if any(fnmatchcase(task.id, p) or fnmatchcase(task.category, p) for p in patterns)
    ]
    return chosen


def by_id() -> dict[str, EvalTask]:
    return {task.id: task for task in SUITE}
