"""Partner secrets at rest: sealed with a key derived from NEWSROOM_SECRET_KEY, and sealed on upgrade."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from shared import crypto
from shared.config import reset_settings
from shared.db import get_engine, session_scope
from shared.errors import PermanentError
from shared.migrate import alembic_config, upgrade
from shared.models import Partner
from tests.helpers.support import newsroom_environment

CLEAR = "whsec_c2VjcmV0LXN0b3JlZC1pbi1jbGVhci1iZWZvcmUtMDAwMw=="


def test_upgrade_seals_secrets_stored_in_clear(tmp_path: Path) -> None:
    database = tmp_path / "newsroom.db"
    env = {"NEWSROOM_DATA_DIR": str(tmp_path), "NEWSROOM_DATABASE_URL": f"sqlite:///{database}"}
    with newsroom_environment(env):
        command.upgrade(alembic_config(), "0002")
        with get_engine().begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO partners (name, url, secret, format, sections, tags, labels, enabled, "
                    "created_at) VALUES ('old', 'http://127.0.0.1:9/', :secret, 'ninjs', '[]', '[]', '[]', "
                    "1, '2026-01-01')"
                ),
                {"secret": CLEAR},
            )
        upgrade()
        with session_scope(read_only=True) as session:
            partner = session.query(Partner).filter_by(name="old").one()
            assert partner.secret == CLEAR
            assert partner.secret_sealed.startswith(crypto.SEALED_PREFIX)
            assert CLEAR not in partner.secret_sealed
        # Scanned while this process still holds the database open (its WAL not yet folded
        # in by a last close), from another process (closing a descriptor of the file here
        # would drop this process's locks on it).
        found = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; print(any(sys.argv[2].encode() in open(f, 'rb').read() "
                "for f in (sys.argv[1], sys.argv[1] + '-wal') if __import__('os').path.exists(f)))",
                str(database),
                CLEAR.removeprefix("whsec_"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert found == "False"


def test_a_set_key_is_used_and_another_key_cannot_open_what_it_sealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSROOM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEWSROOM_SECRET_KEY", "k" * 40)
    reset_settings()
    try:
        sealed = crypto.seal("whsec_abc")
        assert crypto.unseal(sealed) == "whsec_abc"
        assert not (tmp_path / crypto.KEY_FILE).exists()  # a set key is not written anywhere
        monkeypatch.setenv("NEWSROOM_SECRET_KEY", "j" * 40)
        reset_settings()
        with pytest.raises(PermanentError, match="NEWSROOM_SECRET_KEY"):
            crypto.unseal(sealed)
        monkeypatch.setenv("NEWSROOM_SECRET_KEY", "too short")
        reset_settings()
        with pytest.raises(ValueError, match="at least 32"):
            crypto.secret_key()
    finally:
        monkeypatch.undo()
        reset_settings()
