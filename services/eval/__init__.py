"""``selfagent eval``: a built-in desktop task suite with checkers, run against a stack."""

from .desktop import Desktop
from .runner import Runner, RunResult, Target
from .suite import SUITE, EvalTask, Verdict, select

__all__ = ["SUITE", "Desktop", "EvalTask", "RunResult", "Runner", "Target", "Verdict", "select"]
