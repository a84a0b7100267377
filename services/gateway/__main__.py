"""``python -m selfagent.gateway``: serve the gateway with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from .config import Settings
from .main import create_app


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            print(f"gateway: configuration error: {err['msg']}", file=sys.stderr)
        return 2
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, ws="websockets", log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
