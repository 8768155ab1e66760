"""Bearer token file: parsing, errors with line numbers, constant-time lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from vxsnd.tokens import Role, TokenFileError, Tokens

ADMIN = "a" * 32
READ = "r" * 32


def test_parse_roles_names_comments() -> None:
    tokens = Tokens.parse(f"# comment\n\n{ADMIN} admin ops  # trailing comment\n{READ} read\n", "t")
    assert [(t.role, t.name) for t in tokens.entries] == [
        (Role.ADMIN, "ops"),
        (Role.READ, "line-4"),
    ]
    assert tokens.lookup(ADMIN) is tokens.entries[0]
    assert tokens.lookup(READ) is tokens.entries[1]
    assert tokens.lookup("x" * 32) is None
    assert tokens.lookup(ADMIN[:-1]) is None
    assert tokens.lookup("é" * 20) is None


def test_roles_allow() -> None:
    assert Role.ADMIN.allows(Role.ADMIN) and Role.ADMIN.allows(Role.READ)
    assert Role.READ.allows(Role.READ) and not Role.READ.allows(Role.ADMIN)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{ADMIN}\n", "t:1: expected 'TOKEN ROLE [NAME]'"),
        (f"# x\n{ADMIN} root\n", "t:2: unknown role 'root'"),
        (f"{ADMIN} admin a b\n", "t:1: expected 'TOKEN ROLE [NAME]', got 4 fields"),
        ("short admin\n", "t:1: token is 5 characters"),
        (f"{ADMIN} admin\n{ADMIN} read\n", "t:2: duplicate token (first on line 1)"),
        ("# nothing\n", "t: no tokens"),
    ],
)
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(TokenFileError) as info:
        Tokens.parse(text, "t")
    assert message in str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read token file"):
        Tokens.load(tmp_path / "nope")


def test_repr_hides_secret() -> None:
    tokens = Tokens.parse(f"{ADMIN} admin ops\n")
    assert ADMIN not in repr(tokens)
