"""The request's Flask objects, asked for once instead of through a proxy per attribute.

An attribute read through Flask's ``current_app``, ``request`` or ``g`` is first looked
up on werkzeug's LocalProxy itself, where it fails: Python formats an AttributeError's
message and throws it away before the proxy's ``__getattr__`` forwards the read (about
7,000 instructions each by callgrind; a prediction made 26 such reads). The request
path calls these instead, once per function, and reads the object's attributes directly. They are the
proxies' own ``_get_current_object`` (werkzeug's documented way to the proxied object),
so outside a context they raise the same RuntimeError.
"""

from flask import current_app, g, request

app = current_app._get_current_object
request_g = g._get_current_object
current_request = request._get_current_object
