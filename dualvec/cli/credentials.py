"""The options of the commands that call a server (query, rank, loadtest) for a server that asks who calls:
``--token``/``--token-file``, ``--tls-ca``, ``--tls-cert``/``--tls-key``; ``client_credentials`` turns them into
``dualvec.Client`` keyword arguments."""
from __future__ import annotations

import argparse

from dualvec.client.credentials import read_token_file
from dualvec.kernel.errors import DualvecError


def add_credential_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("who calls (for a server started with --auth-token-file or --tls-cert)")
    token = group.add_mutually_exclusive_group()
    token.add_argument("--token", metavar="TOKEN",
                       help="bearer token (other users can see a command line: prefer --token-file)")
    token.add_argument("--token-file", metavar="FILE", help="file whose first token is sent (# comments ignored)")
    group.add_argument("--tls-ca", metavar="FILE",
                       help="connect over TLS; FILE: the CA certificate (PEM) that signed the server's")
    group.add_argument("--tls-cert", metavar="FILE",
                       help="this client's certificate (PEM), for a server asking for one (mutual TLS); implies TLS")
    group.add_argument("--tls-key", metavar="FILE", help="the private key (PEM) of --tls-cert")


def client_credentials(args: argparse.Namespace) -> dict:
    """token, tls_ca, tls_cert, tls_key for dualvec.Client, from the options (absent ones are None). Raises
    DualvecError naming an option that cannot be used."""
    token = getattr(args, "token", None)
    token_file = getattr(args, "token_file", None)
    if token_file:
        token = read_token_file(token_file)
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if (cert is None) != (key is None):
        raise DualvecError("--tls-cert and --tls-key go together: give both")
    return {"token": token or None, "tls_ca": getattr(args, "tls_ca", None), "tls_cert": cert, "tls_key": key}
