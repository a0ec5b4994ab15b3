"""What a user name, an e-mail address and a password may be.

The rules the API, the CLI and the database share (docs/operations.md, "Users"):

- A user name is compared by its key: Unicode NFKC normalisation, case folding,
  NFKC again (Unicode's compatibility caseless match), so ``Admin``, ``ADMIN`` and
  fullwidth ``ＡＤＭＩＮ`` are one name. The spelling given at creation is kept for
  display. New names are 1 to 64 characters, as typed and after NFKC, of letters,
  combining marks after a letter, decimal digits and ``. _ - @``.
- An e-mail address passes email-validator's syntax and length checks (no DNS).
- A password follows NIST SP 800-63B: a minimum length (MLAPI_PASSWORD_MIN_LENGTH),
  at most PASSWORD_MAX_LENGTH characters, any characters, no composition rules, and
  not a common, repetitive or context-specific password.
"""

import gzip
import unicodedata
from functools import cache
from pathlib import Path

from flask import current_app

MAX_USERNAME_LENGTH = 64
USERNAME_PUNCTUATION = frozenset("._-@")
USERNAME_RULE = (
    "User names are 1 to 64 letters, digits and the characters . _ - @ "
    "(no spaces, slashes or other symbols)."
)
PASSWORD_MAX_LENGTH = 128
# 20,000 common passwords, lower-cased: Django 5.2.19's django/contrib/auth/common-passwords.txt.gz
# (BSD-3-Clause), compiled by Royce Williams; see mlapi/data/README.md.
COMMON_PASSWORDS = Path(__file__).parent / "data" / "common-passwords.txt.gz"
# Context-specific words SP 800-63B names: the service's own name.
SERVICE_WORDS = frozenset({"mlapi"})


class UserError(Exception):
    """A user operation that cannot be done: a refused name, e-mail address or password,
    a duplicate or an unknown user. Its message is for the person who asked."""


def username_key(username):
    """The form user names are compared in: NFKC, case-folded, NFKC again."""
    if username.isascii():  # NFKC leaves ASCII as it is, and folds it to lower case
        return username.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())


def lookupable(username):
    """Whether ``username`` can name a stored user at all (cheap; no database).

    Looser than :func:`check_username` so that names created under earlier rules
    still log in; it keeps control characters (NUL breaks PostgreSQL) and padding out.
    """
    return (
        0 < len(username) <= MAX_USERNAME_LENGTH
        and username == username.strip()
        and username.isprintable()
    )


def check_username(username):
    """Refuse a new user name outside the documented character set."""
    normal = unicodedata.normalize("NFKC", username)
    if not (0 < len(username) <= MAX_USERNAME_LENGTH and 0 < len(normal) <= MAX_USERNAME_LENGTH):
        raise UserError(USERNAME_RULE)
    for position, char in enumerate(normal):
        category = unicodedata.category(char)
        if category[0] == "L" or category == "Nd" or char in USERNAME_PUNCTUATION:
            continue
        if (
            category[0] == "M"
            and position > 0
            and unicodedata.category(normal[position - 1])[0] in "LM"
        ):
            continue
        raise UserError(f"{USERNAME_RULE} Not allowed: {char!r}.")


def check_email(email):
    """The address in its normalised form; raise UserError if its syntax or length fails."""
    # Imported here: only user creation and changes check an address (email-validator and
    # idna cost a worker about half a MiB).
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(email, check_deliverability=False, strict=True).normalized
    except EmailNotValidError as exc:
        raise UserError(f"Invalid e-mail address: {exc}") from None


def check_password(password, username=None):
    """Refuse a password NIST SP 800-63B says a verifier must not accept."""
    minimum = current_app.config["PASSWORD_MIN_LENGTH"]
    if len(password) < minimum:
        raise UserError(f"Password must be at least {minimum} characters.")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise UserError(f"Password must be at most {PASSWORD_MAX_LENGTH} characters.")
    folded = password.strip().casefold()
    if len(set(password)) == 1 or not folded:
        raise UserError("Password must not be one character repeated or only spaces.")
    if folded in common_passwords():
        raise UserError("Password is too common: choose one that is not on public lists.")
    if folded in SERVICE_WORDS or (username is not None and folded == username_key(username)):
        raise UserError("Password must not be the user name or the service's name.")


@cache
def common_passwords():
    """The blocklist, read on first use (the API's hot path never needs it)."""
    with gzip.open(COMMON_PASSWORDS, "rt", encoding="utf-8") as handle:
        return frozenset(line.strip() for line in handle if line.strip())
