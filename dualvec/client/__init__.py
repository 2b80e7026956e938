"""The Python client of a dualvec server: ``dualvec.client.Client`` (also ``dualvec.Client``), and
``wait_until_serving``, which waits for a server's gRPC health to report SERVING."""
from dualvec.client.client import Client, ClientError, search_request
from dualvec.client.readiness import NotServingError, pick_free_port, wait_until_serving

__all__ = ["Client", "ClientError", "NotServingError", "pick_free_port", "search_request", "wait_until_serving"]
