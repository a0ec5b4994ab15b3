"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app`` and ``flask --app wsgi``."""

import config
from mlapi import create_app

# Unusable settings stop the process with one JSON log line naming the setting.
app = config.start(create_app)
