"""`make migration m="..."`: a new revision holding what gateway/store/tables/ adds to head (autogenerate)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from gateway.store.schema import alembic_config, make_engine


def main(argv: list[str]) -> int:
    message = " ".join(argv).strip()
    if not message:
        print('usage: make migration m="what the revision changes"', file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        # The migrations so far, applied to a scratch SQLite file, are what the typed tables are compared with.
        engine = make_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
        try:
            with engine.begin() as conn:
                config = alembic_config(conn)
                command.upgrade(config, "head")
                number = len(list(ScriptDirectory.from_config(config).walk_revisions())) + 1
                command.revision(config, message=message, autogenerate=True, rev_id=f"{number:04d}")
        finally:
            engine.dispose()
    print("review it (types, server defaults, data), then run: .venv/bin/pytest -q tests/store/test_migrations.py")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
