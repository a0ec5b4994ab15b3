"""The token signing secret: required in production, generated once elsewhere."""

import os
import secrets

MIN_SECRET_BYTES = 32


class ConfigurationError(RuntimeError):
    """The configuration is unsafe or incomplete; the service refuses to start."""


def load_secret(app):
    """Return the secret for signing tokens, per the rules of the running mode."""
    secret = app.config.get("SECRET_KEY")
    if app.config["ENV"] == "production":
        if not secret or len(str(secret).encode()) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"MLAPI_SECRET_KEY must be set to at least {MIN_SECRET_BYTES} bytes when "
                "MLAPI_ENV=production (generate one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(48))')."
            )
        return str(secret)
    if secret:
        return str(secret)
    return instance_secret(app.instance_path)


def instance_secret(folder):
    """Read the generated secret, creating it (mode 0600) if no process has yet.

    The file is written under a temporary name and linked into place, so
    concurrent workers agree on one secret and none reads a partial file.
    """
    path = os.path.join(folder, "secret_key")
    if not os.path.exists(path):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path) as handle:
        return handle.read().strip()
