"""`dualvec rank "QUERY" DOCS.jsonl|DOCS.txt`: documents ranked for a query by DESM, with DESM IN-OUT, DESM IN-IN
and BM25 side by side.

Documents come from a JSON-lines file (``.jsonl`` / ``.ndjson``: one object a line with ``id`` and ``text`` or
``tokens``) or from any other text file (one document a line, its id the line number). With ``--bundle`` they are
scored here (dualvec.kernel.desm, the function the server answers ScoreDocuments with); otherwise by the server at
``--addr`` through dualvec.client.

Ranking is by the chosen DESM variant (``--space``, mixed with BM25 by ``--bm25-weight``). A document none of whose
words the model knows has no DESM score (0, flagged by ``document_words_found = 0``): it is marked unscored
(``scored: false``, "-" in the table) and ranked after every scored one, since DESM IN-OUT values are typically
negative and 0 would otherwise put it first.

The query is tokenized here in both cases, with the bundle's tokenizer (from the server's GetInfo with ``--addr``),
so that the header names the same tokens whichever scored it.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from dualvec.cli.credentials import client_credentials
from dualvec.kernel.errors import DualvecError, SpaceUnavailable

VARIANTS = (("in-out", "out"), ("in-in", "in"))   # (name, document space); the query space is IN
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class RankConfig:
    query: str
    documents: str
    addr: str | None = None
    bundle: str | None = None
    space: str = "in-out"
    bm25_weight: float = 0.0
    model: str = ""
    as_json: bool = False
    service_config: str | None = None  # for --addr (dualvec.client.service_config)
    credentials: dict | None = None     # token and TLS for dualvec.Client (dualvec.cli.credentials)


@dataclass(frozen=True)
class Document:
    """A document read from the input file: its id and its text or its tokens (tokens win when both are given)."""

    id: str
    text: str = ""
    tokens: tuple[str, ...] | None = None

    def preview(self, width: int = 60) -> str:
        text = " ".join(self.text.split()) if self.tokens is None else " ".join(self.tokens)
        return text if len(text) <= width else text[: width - 3] + "..."


@dataclass(frozen=True)
class RankedDocument:
    rank: int
    id: str
    score: float                 # by the chosen variant, BM25 mixed in
    desm_in_out: float | None    # None: the bundle has no OUT space
    desm_in_in: float | None
    bm25: float                  # BM25 divided by the best BM25 of the documents
    query_words_found: int
    document_words_found: int
    preview: str
    scored: bool = True          # False: no word of the document is known, so it has no DESM score; ranked last


def run_rank(args: argparse.Namespace) -> int:
    """The `rank` subcommand."""
    cfg = RankConfig(query=args.query, documents=args.documents, addr=getattr(args, "addr", None),
                     bundle=getattr(args, "bundle", None), space=getattr(args, "space", RankConfig.space),
                     bm25_weight=float(getattr(args, "bm25_weight", RankConfig.bm25_weight)),
                     model=getattr(args, "model", "") or "",
                     as_json=bool(getattr(args, "json", False)), service_config=getattr(args, "service_config", None),
                     credentials=client_credentials(args))
    if cfg.space not in dict(VARIANTS):
        raise DualvecError(f"--space must be one of {', '.join(name for name, _ in VARIANTS)}, got {cfg.space!r}")
    documents = read_documents(cfg.documents)
    if cfg.bundle:
        per_variant, source, query_tokens = score_locally(cfg, documents)
    else:
        per_variant, source, query_tokens = score_remotely(cfg, documents)
    ranked = rank(per_variant, documents, cfg.space)
    if cfg.as_json:
        print(json.dumps({"query": cfg.query, "query_tokens": query_tokens, "ranked_by": cfg.space,
                          "bm25_weight": cfg.bm25_weight, "bm25_document_frequencies": source,
                          "scored_by": f"bundle {cfg.bundle}" if cfg.bundle else f"server {server_address(cfg)}",
                          "documents": [asdict(r) for r in ranked]}, indent=2))
    else:
        print(format_ranking(cfg, ranked, source, query_tokens))
    return 0


# ----------------------------------------------------------------------------------------------------------- input

def read_documents(path: str) -> list[Document]:
    """Documents of a JSON-lines file (by suffix .jsonl/.ndjson) or of a text file, one a line."""
    file = Path(path)
    if not file.exists():
        raise DualvecError(f"{file}: no such file")
    if file.is_dir():
        raise DualvecError(f"{file}: is a directory, expected a .jsonl or text file of documents")
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    docs: list[Document] = []
    jsonl = file.suffix.lower() in JSONL_SUFFIXES
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            docs.append(Document(str(lineno), text=line))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DualvecError(f"{file}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DualvecError(f"{file}:{lineno}: expected an object with id and text or tokens")
        tokens = obj.get("tokens")
        text = obj.get("text")
        if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
            raise DualvecError(f"{file}:{lineno}: tokens must be a list of strings")
        if tokens is None and not isinstance(text, str):
            raise DualvecError(f"{file}:{lineno}: the object needs text (a string) or tokens (a list of strings)")
        docs.append(Document(str(obj.get("id", lineno)), text=text if isinstance(text, str) else "",
                             tokens=tuple(tokens) if tokens is not None else None))
    if not docs:
        raise DualvecError(f"{file}: no documents in it")
    return docs


# --------------------------------------------------------------------------------------------------------- scoring

def score_locally(cfg: RankConfig, documents: Sequence[Document]):
    """Score with dualvec.kernel.desm on a bundle read here. Returns ({variant: results or None}, BM25 document
    frequency source, query tokens)."""
    from dualvec.kernel.bundle import read_bundle
    from dualvec.kernel.desm import DesmLimits, DocumentInput, score_documents
    from dualvec.kernel.spaces import Space
    from dualvec.kernel.tokenizer import Tokenizer

    bundle = read_bundle(cfg.bundle)
    tokenizer = Tokenizer.from_dict(bundle.manifest.tokenizer)
    query_tokens = tokenizer(cfg.query)
    inputs = [DocumentInput(d.id, d.tokens if d.tokens is not None else tuple(tokenizer(d.text))) for d in documents]
    # the server's limits protect a shared process; here the user's own file is scored whatever its size
    limits = DesmLimits(max_documents=len(inputs), max_document_tokens=max([len(d.tokens) for d in inputs] + [1]),
                        max_query_tokens=max(len(query_tokens), 1))
    per_variant, source = {}, ""
    for name, document_space in VARIANTS:
        try:
            per_variant[name], source = score_documents(bundle, query_tokens, inputs, query_space=Space.IN,
                                                        document_space=Space(document_space),
                                                        bm25_weight=cfg.bm25_weight, limits=limits)
        except SpaceUnavailable:
            if name == cfg.space:
                raise
            per_variant[name] = None
    return per_variant, source, query_tokens


def server_address(cfg: RankConfig) -> str:
    """--addr, or the client's default address."""
    from dualvec.cli.defaults import default_of

    return cfg.addr or str(default_of("dualvec.client:Client", "address"))


def score_remotely(cfg: RankConfig, documents: Sequence[Document]):
    """Score through a running server (dualvec.client.Client.score_documents). Same return as score_locally: the
    query is tokenized here with the tokenizer the server reports (GetInfo) and sent as tokens."""
    import grpc

    from dualvec.client import Client, ClientError
    from dualvec.kernel.tokenizer import Tokenizer

    payload = [{"id": d.id, "tokens": list(d.tokens)} if d.tokens is not None else {"id": d.id, "text": d.text}
               for d in documents]
    per_variant, source = {}, ""
    with Client(server_address(cfg), model=cfg.model, service_config=cfg.service_config,
                **(cfg.credentials or {})) as client:
        query_tokens = Tokenizer.from_dict(client.info().get("tokenizer") or None)(cfg.query)
        for name, document_space in VARIANTS:
            try:
                result = client.score_documents(cfg.query, query_tokens=query_tokens, documents=payload,
                                                query_space="in", document_space=document_space,
                                                bm25_weight=cfg.bm25_weight)
            except ClientError as exc:
                # the other variant's space may be missing (an IN-only bundle): show "-" for it
                if name == cfg.space or exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                per_variant[name] = None
                continue
            per_variant[name] = list(result.scores)
            source = result.bm25_document_frequencies
    return per_variant, source, query_tokens


def rank(per_variant: dict, documents: Sequence[Document], space: str) -> list[RankedDocument]:
    """Merge the variants' scores (each in request order) and sort by the chosen variant's score, best first;
    documents without a known word last; ties keep the input order."""
    chosen = per_variant[space]
    if chosen is None or len(chosen) != len(documents):
        raise DualvecError(f"the scorer returned {0 if chosen is None else len(chosen)} scores for "
                           f"{len(documents)} documents")
    columns = {name: per_variant.get(name) for name, _ in VARIANTS}
    order = sorted(range(len(documents)),
                   key=lambda i: (chosen[i].document_words_found == 0, -chosen[i].score, i))
    ranked = []
    for position, i in enumerate(order, 1):
        main = chosen[i]
        ranked.append(RankedDocument(
            rank=position, id=main.id, score=float(main.score),
            desm_in_out=None if columns["in-out"] is None else float(columns["in-out"][i].desm),
            desm_in_in=None if columns["in-in"] is None else float(columns["in-in"][i].desm),
            bm25=float(main.bm25), query_words_found=int(main.query_words_found),
            document_words_found=int(main.document_words_found), preview=documents[i].preview(),
            scored=main.document_words_found > 0))
    return ranked


# ---------------------------------------------------------------------------------------------------------- output

def format_ranking(cfg: RankConfig, ranked: list[RankedDocument], source: str, query_tokens: list[str] | None) -> str:
    """The ranking as a text table."""
    variant = "DESM " + cfg.space.upper()
    how = variant if cfg.bm25_weight == 0 else f"{1 - cfg.bm25_weight:g} x {variant} + {cfg.bm25_weight:g} x BM25"
    found = ranked[0].query_words_found if ranked else 0
    if query_tokens is not None:
        tokens = f"tokens: {' '.join(query_tokens)}; {found} of {len(query_tokens)} known"
    else:
        tokens = f"{found} query tokens known"
    lines = [f"query {cfg.query!r} ({tokens})",
             f"ranked by {how}; BM25 divided by the best BM25 of these documents, document frequencies from the "
             f"{source or '?'}"]
    header = ["rank", "id", "score", "DESM IN-OUT", "DESM IN-IN", "BM25", "known words", "text"]
    rows = [[str(r.rank), r.id, f"{r.score:.4f}", _cell(r.desm_in_out), _cell(r.desm_in_in), f"{r.bm25:.3f}",
             str(r.document_words_found), r.preview] if r.scored else
            [str(r.rank), r.id, "unscored", "-", "-", f"{r.bm25:.3f}", "0", r.preview]
            for r in ranked]
    widths = [max(len(header[c]), *(len(row[c]) for row in rows)) for c in range(len(header))]
    right = {0, 2, 3, 4, 5, 6}
    fmt = lambda cells: "  ".join(c.rjust(w) if j in right else c.ljust(w)  # noqa: E731
                                  for j, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines.append(fmt(header))
    lines.extend(fmt(row) for row in rows)
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
