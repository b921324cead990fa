"""VO member lists: plain DN lists and grid-mapfiles, recognised line by line, and strict errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofed.auth.members import VOMemberList, parse_members, read_member_file
from geofed.auth.settings import VOMembers
from geofed.errors import ConfigError


def parse(text: str) -> frozenset[str]:
    return parse_members(text, "members.txt")


def test_plain_dns_blank_lines_and_comments() -> None:
    text = "# members of atlas\n\n/DC=org/CN=a\n   \n  /DC=org/CN=b  \n# /DC=org/CN=commented\n"
    assert parse(text) == {"/DC=org/CN=a", "/DC=org/CN=b"}


def test_quoted_dns_may_contain_spaces() -> None:
    assert parse('"/DC=org/CN=Some One"\n') == {"/DC=org/CN=Some One"}


def test_quoted_grid_mapfile_lines() -> None:
    text = '"/DC=org/CN=Some One" atlas001\n"/DC=org/CN=x" .atlas\n"/DC=org/CN=y"\tprd1,prd2 # pool\n'
    assert parse(text) == {"/DC=org/CN=Some One", "/DC=org/CN=x", "/DC=org/CN=y"}


def test_unquoted_lines_of_a_grid_mapfile() -> None:
    text = '"/DC=org/CN=Some One" acct\n/DC=org/CN=x account\n/DC=org/CN=y\tacct1,acct2\n'
    assert parse(text) == {"/DC=org/CN=Some One", "/DC=org/CN=x", "/DC=org/CN=y"}


def test_a_dn_list_keeps_blanks_in_the_last_component() -> None:
    text = "/DC=org/DC=test/OU=Users/CN=Plain Member\n/DC=org/CN=x # a comment\n"
    assert parse(text) == {"/DC=org/DC=test/OU=Users/CN=Plain Member", "/DC=org/CN=x"}


def test_a_grid_mapfile_refuses_an_unquoted_dn_with_blanks() -> None:
    with pytest.raises(ConfigError, match=r"m.txt:2: .*quote DNs with blanks"):
        parse_members('"/DC=org/CN=a" acct\n/DC=org/CN=Some One acct\n', "m.txt")


def test_unquoted_dn_with_spaces_in_the_middle_is_one_dn() -> None:
    # the text after the blank has '/' or '=': it cannot be an account, so the blank is in the DN
    dn = "/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=jdoe/CN=John Doe"
    assert parse(dn) == {dn}
    assert parse("/O=Grid/CN=John Ronald Doe") == {"/O=Grid/CN=John Ronald Doe"}  # more than one word


def test_trailing_comment_after_a_dn() -> None:
    assert parse("/DC=org/CN=x # the x robot\n") == {"/DC=org/CN=x"}
    assert parse('"/DC=org/CN=y" # the y robot\n') == {"/DC=org/CN=y"}


def test_windows_line_endings() -> None:
    assert parse("/DC=org/CN=a\r\n/DC=org/CN=b\r\n") == {"/DC=org/CN=a", "/DC=org/CN=b"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/DC=org/CN=a\nCN=b,DC=org\n", r"members\.txt:2: not a DN in slash form"),
        ('"CN=x"\n', r"members\.txt:1: not a DN in slash form"),
        ('""\n', r"members\.txt:1: not a DN"),
        ('\n\n"/DC=org/CN=x\n', r"members\.txt:3: unterminated quote"),
        ('"/DC=org/CN=x"acct\n', r"members\.txt:1: text right after the closing quote"),
        ('"/DC=org/CN=x" two words\n', r"members\.txt:1: after the DN, expected one account field"),
        ("someone\n", r"members\.txt:1: not a DN"),
    ],
)
def test_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_read_member_file(tmp_path: Path) -> None:
    path = tmp_path / "atlas.txt"
    path.write_text("/DC=org/CN=a\n", encoding="utf-8")
    assert read_member_file(path) == {"/DC=org/CN=a"}
    path.write_text("/DC=org/CN=a\nnope\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"atlas\.txt:2: not a DN"):
        read_member_file(path)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read VO member file .*missing\.txt"):
        read_member_file(tmp_path / "missing.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"/DC=org/CN=\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"binary\.txt: not UTF-8"):
        read_member_file(binary)
    with pytest.raises(ConfigError, match="cannot read VO member file"):
        read_member_file(tmp_path)  # a directory


def test_from_settings_maps_dns_to_vos(tmp_path: Path) -> None:
    (tmp_path / "atlas").write_text("/CN=a\n/CN=both\n", encoding="utf-8")
    (tmp_path / "cms").write_text('"/CN=both" cms001\n/CN=c\n', encoding="utf-8")
    members = VOMemberList.from_settings(
        [
            VOMembers(vo="atlas", file=tmp_path / "atlas"),
            VOMembers(vo="cms", file=tmp_path / "cms"),
            VOMembers(vo="atlas-prod", file=tmp_path / "atlas"),  # the same file for a second VO
        ]
    )
    assert members.vos_of("/CN=a") == {"atlas", "atlas-prod"}
    assert members.vos_of("/CN=both") == {"atlas", "atlas-prod", "cms"}
    assert members.vos_of("/CN=c") == {"cms"}
    assert members.vos_of("/CN=nobody") == frozenset()
    assert len(members) == 3 and members


def test_empty_member_list() -> None:
    members = VOMemberList.from_settings([])
    assert not members and members.vos_of("/CN=a") == frozenset()


def test_from_settings_fails_on_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        VOMemberList.from_settings([VOMembers(vo="atlas", file=tmp_path / "nowhere")])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('/"# \t\r\nCN=ab,.\\x'), max_size=80) | st.text(max_size=80))
def test_random_text_parses_or_raises_config_error(text: str) -> None:
    try:
        dns = parse(text)
    except ConfigError as exc:
        assert str(exc).startswith("members.txt:")
    else:
        assert all(dn.startswith("/") for dn in dns)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet=st.characters(exclude_characters='"\r\n'), min_size=1, max_size=30), max_size=8)
)
def test_any_quoted_dn_reads_back(names: list[str]) -> None:
    dns = {"/CN=" + name for name in names}
    assert parse("".join(f'"{dn}" account\n' for dn in dns)) == dns
