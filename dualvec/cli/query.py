"""`dualvec query WORD... --from in --to out`: neighbours from a running server, as a table or JSON."""
from __future__ import annotations

import argparse
import json

from dualvec.cli.credentials import client_credentials
from dualvec.client import Client
from dualvec.kernel.errors import DualvecError
from dualvec.kernel.results import Neighbor


def split_words(words: list[str]) -> tuple[list[str], list[str]]:
    """'king -man woman' -> positive [king, woman], negative [man]. A lone '-' or '--x' is kept as a word."""
    pos, neg = [], []
    for w in words:
        if w.startswith("-") and len(w) > 1 and not w.startswith("--"):
            neg.append(w[1:])
        else:
            pos.append(w)
    return pos, neg


def format_neighbors(title: str, neighbors: list[Neighbor]) -> str:
    lines = [title, f"{'#':>3}  {'word':<24} {'cosine':>8} {'id':>9}"]
    for rank, n in enumerate(neighbors, 1):
        lines.append(f"{rank:>3}  {n.word:<24} {n.score:>8.4f} {n.id:>9}")
    return "\n".join(lines)


def check_words(words: list[str]) -> None:
    """A word the request cannot carry (bytes that are not UTF-8 in the command line) is refused by name."""
    for word in words:
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:
            shown = word.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise DualvecError(f"the word '{shown}' is not valid UTF-8") from None


def run_query(args: argparse.Namespace) -> int:
    pos, neg = split_words(args.words)
    neg += list(getattr(args, "negative", []) or [])
    check_words(pos + neg)
    with Client(args.addr, timeout=args.timeout, model=args.model,
                service_config=getattr(args, "service_config", None), **client_credentials(args)) as client:
        try:
            neighbors = client.search(pos, neg, query_space=args.query_space, target_space=args.target_space,
                                      k=args.k, restrict_vocab=args.restrict_vocab, exact=args.exact)
        except ValueError as exc:  # a value the request cannot hold (the parser's ranges keep these out)
            raise DualvecError(f"the request cannot be sent: {exc}") from None
    if args.json:
        print(json.dumps({"positive": pos, "negative": neg, "from": args.query_space, "to": args.target_space,
                          "k": args.k, "exact": args.exact,
                          "neighbors": [{"word": n.word, "id": n.id, "score": n.score} for n in neighbors]}))
    else:
        query = " ".join(pos + [f"-{w}" for w in neg])
        print(format_neighbors(f"{query}  ({args.query_space.upper()} -> {args.target_space.upper()}"
                               f"{', exact' if args.exact else ''})", neighbors))
    return 0
