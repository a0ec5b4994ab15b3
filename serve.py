"""Start mlapi under gunicorn: ``python serve.py [gunicorn options]``.

The same as ``gunicorn -c gunicorn.conf.py wsgi:app [options]``, except for a bad
``WEB_CONCURRENCY``. gunicorn converts that variable with ``int()`` while it is being
imported (the default of its ``workers`` setting, in gunicorn/config.py), before any
settings file is read: ``WEB_CONCURRENCY=abc`` would end in gunicorn's traceback. Here
gunicorn is imported with the variable hidden, then gunicorn.conf.py checks it like every
other setting: one JSON log line naming it and exit status 4. scripts/run and the image
start mlapi this way.
"""

import os
import sys


def main(argv):
    workers = os.environ.pop("WEB_CONCURRENCY", None)
    from gunicorn.app.wsgiapp import run

    if workers is not None:
        os.environ["WEB_CONCURRENCY"] = workers
    sys.argv = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app", *argv]
    return run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
