"""Import PyJWT without the ``cryptography`` package, which HS256 does not need.

PyJWT imports ``cryptography`` whenever it is installed (for RSA and EC keys), which
costs each worker about 10 MiB. mlapi signs and verifies HS256 only (config.py), so
PyJWT is imported first here with ``cryptography`` hidden; other code that imports
``cryptography`` later gets it as usual. Imported first by ``mlapi/__init__.py``.
"""

import sys

if "jwt" not in sys.modules and "cryptography" not in sys.modules:
    sys.modules["cryptography"] = None  # makes PyJWT's optional import fail
    try:
        import jwt  # noqa: F401
    finally:
        del sys.modules["cryptography"]
