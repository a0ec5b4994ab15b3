"""mlapi's version, reported as mlapi_build_info{version}."""

__version__ = "1.0.0"
