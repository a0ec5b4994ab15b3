"""The rules for user names, e-mail addresses and passwords (mlapi/credentials.py)."""

import hashlib

import pytest

from mlapi import credentials
from mlapi.credentials import UserError, username_key


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("testuser", "testuser"),
        ("TestUser", "testuser"),
        ("TESTUSER", "testuser"),
        ("ｔｅｓｔｕｓｅｒ", "testuser"),
        ("ＡＤＭＩＮ", "admin"),
        ("Straße", "strasse"),
        ("ﬁle", "file"),
        ("José", "josé"),
        ("Jose\u0301", "josé"),
    ],
)
def test_names_compare_by_their_key(name, key):
    """NFKC, case folding and NFKC again: one key for names a person reads as one."""
    assert username_key(name) == key


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        "Alice.Smith",
        "a_b-c@example.com",
        "José",
        "Łukasz",
        "名前",
        "x" * 64,
        "a1",
        "ｔｅｓｔ",
    ],
)
def test_names_in_the_character_set_are_accepted(name):
    credentials.check_username(name)


@pytest.mark.parametrize(
    "name",
    [
        "weird name/../x",
        "",
        "x" * 65,
        "a b",
        "a/b",
        "..\\x",
        "tab\tname",
        "zero\u200bwidth",
        "\u0301accent-first",
        "emoji\U0001f600",
        "semi;colon",
        "nbsp\u00a0name",
        "plus+sign",
    ],
)
def test_names_outside_the_character_set_are_refused(name):
    with pytest.raises(UserError, match="letters, digits and the characters"):
        credentials.check_username(name)


def test_email_is_normalised_and_checked_without_dns():
    assert credentials.check_email("Alice@EXAMPLE.com") == "Alice@example.com"
    assert credentials.check_email("bob@no-such-domain-for-mlapi-tests.com")


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("not-an-email", "@-sign"),
        ("a@b", "period"),
        ("x" * 250 + "@example.com", "too long"),
        ("a" * 65 + "@example.com", "too long"),
        ("two@@example.com", ""),
        ("", ""),
    ],
)
def test_bad_email_is_refused(email, reason):
    with pytest.raises(UserError, match="Invalid e-mail address") as info:
        credentials.check_email(email)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("password", "too common"),
        ("Password", "too common"),
        ("12345678", "too common"),
        ("qwertyuiop", "too common"),
        ("iloveyou", "too common"),
        (" " * 8, "only spaces"),
        ("aaaaaaaaaaaa", "one character repeated"),
        ("short", "at least 8"),
        ("x" * 129, "at most 128"),
        ("MLAPI", "at least 8"),
    ],
)
def test_weak_passwords_are_refused(app, password, reason):
    with app.app_context(), pytest.raises(UserError, match=reason):
        credentials.check_password(password)


def test_password_equal_to_the_user_name_is_refused(app):
    with app.app_context(), pytest.raises(UserError, match="user name"):
        credentials.check_password("Margaret.Hamilton", "margaret.hamilton")


@pytest.mark.parametrize(
    "password",
    [
        "correct-horse-battery",
        "  spaces  inside  and  around  ",  # spaces are characters like any other
        "pässwörd-ünïcode",
        "no digits or symbols at all here",
        "x" * 63 + "y" + "z" * 64,  # 128: the longest accepted
    ],
)
def test_long_or_plain_passwords_are_accepted_without_composition_rules(app, password):
    with app.app_context():
        credentials.check_password(password)


def test_minimum_length_is_configurable(make_app):
    app = make_app(PASSWORD_MIN_LENGTH=15)
    with app.app_context():
        with pytest.raises(UserError, match="at least 15"):
            credentials.check_password("fourteen-chars")
        credentials.check_password("fifteen-chars!!")


def test_blocklist_file_is_the_documented_one():
    """The shipped list is Django 5.2.19's, as mlapi/data/README.md records it."""
    digest = hashlib.sha256(credentials.COMMON_PASSWORDS.read_bytes()).hexdigest()
    readme = (credentials.COMMON_PASSWORDS.parent / "README.md").read_text()
    assert digest in readme
    blocklist = credentials.common_passwords()
    assert len(blocklist) > 19_000
    assert {"password", "123456", "qwerty"} <= blocklist
    assert all(word == word.lower() for word in blocklist)


@pytest.mark.parametrize("value", [7, 0, 65, "12", 8.5, True])
def test_minimum_length_setting_is_range_checked_at_start(make_app, value):
    with pytest.raises(ValueError, match="MLAPI_PASSWORD_MIN_LENGTH"):
        make_app(PASSWORD_MIN_LENGTH=value)


def test_ascii_shortcut_gives_the_full_rule():
    """The key's ASCII fast path (lower()) agrees with NFKC + casefold + NFKC."""
    import unicodedata

    def full(name):
        return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())

    names = [chr(i) for i in range(128)] + ["TestUser", "A.B-C_D@E", "Zz09"]
    assert [username_key(n) for n in names] == [full(n) for n in names]
