"""Entry point: ``python -m selfagent.provisioner``."""

from __future__ import annotations

import sys

from selfagent.bus.runtime import run_service

from .config import Settings
from .service import build


def main() -> None:
    sys.exit(run_service(build, Settings))


if __name__ == "__main__":
    main()
