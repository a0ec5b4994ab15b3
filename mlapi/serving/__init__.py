"""The data plane: models, their files, the registry, tensor decoding and the prediction
cache. Nothing here knows HTTP or Flask; mlapi/errors.py maps the errors raised here."""
