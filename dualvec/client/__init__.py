"""The Python client of a dualvec server: ``dualvec.client.Client`` (also ``dualvec.Client``)."""
from dualvec.client.client import Client, ClientError, search_request

__all__ = ["Client", "ClientError", "search_request"]
