"""What `dualvec info` and GetInfo report about a bundle."""
from __future__ import annotations

from dataclasses import asdict

from dualvec.kernel.bundle import Bundle, bundle_size
from dualvec.kernel.spaces import ALL_PAIRS, pair_name


def bundle_summary(bundle: Bundle) -> dict:
    """A JSON-able summary: vocabulary, dimension, spaces, index per space, tuned recall per pair, sizes."""
    m = bundle.manifest
    spaces = {name: {"index": m.indexes[name].description, "kind": m.indexes[name].spec.kind,
                     "build_seconds": m.indexes[name].build_seconds, "bytes": m.space_bytes(name)}
              for name in m.spaces}
    pairs = {}
    for q, t in ALL_PAIRS:
        entry = m.pairs.get(pair_name(q, t))
        if entry is not None:
            pairs[pair_name(q, t)] = {k: v for k, v in (
                ("params", entry.params.to_dict()), ("recall_uniform", entry.recall_uniform),
                ("recall_frequency", entry.recall_frequency),
                ("microseconds_per_query", entry.microseconds_per_query), ("exact", entry.exact or None),
                ("answer_rows", entry.answer_rows or None),
                ("tail_params", entry.tail_params.to_dict() if entry.tail_params is not None else None),
                ("tail_recall_uniform", entry.tail_recall_uniform),
                ("tail_recall_frequency", entry.tail_recall_frequency),
                ("tail_microseconds_per_query", entry.tail_microseconds_per_query))
                if v is not None}
    return {"path": str(bundle.path), "format_version": m.format_version, "dualvec_version": m.dualvec_version,
            "created": m.created, "content_id": m.content_id or None, "source": m.source,
            "vocab_size": m.vocab_size, "dim": m.dim, "spaces": m.spaces, "has_out": m.has_out,
            "counts_known": m.counts_known, "most_frequent": bundle.vocab.words[:8], "indexes": spaces,
            "pairs": pairs, "tokenizer": m.tokenizer, "document_frequencies": "docfreq.tsv" in m.files,
            "build": asdict(m.build), "bytes": bundle_size(bundle.path)}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def seconds(value: float) -> str:
    """A duration with the digits it needs: '0.062 s', '0.8 s', '14.1 s' (never '0.0 s' for a short build)."""
    return f"{value:.2g} s" if value < 1 else f"{value:.1f} s"


def format_summary(s: dict) -> str:
    lines = [f"bundle      {s['path']}",
             f"format      v{s['format_version']} (dualvec {s['dualvec_version']}, {s['created']})",
             f"source      {s['source'].get('kind')}: {s['source'].get('path')}",
             f"vocabulary  {s['vocab_size']:,} words ({', '.join(s['most_frequent'])}, ...)",
             f"dimension   {s['dim']}",
             f"spaces      {', '.join(x.upper() for x in s['spaces'])}"
             + ("" if s["has_out"] else "   (IN only: no OUT space)"),
             f"size        {_mib(s['bytes'])}"]
    if s.get("build") and s["build"].get("seconds"):
        # the manifest times what the bundle took from the read model; `dualvec build` prints the whole wall time
        lines.append(f"indexed in  {seconds(s['build']['seconds'])} (normalizing, indexing and tuning), peak memory "
                     f"{s['build']['peak_memory_mib']:,.0f} MiB")
    lines.append("")
    lines.append(f"{'space':<6} {'index':<40} {'build':>8} {'size':>14}")
    for name, meta in s["indexes"].items():
        lines.append(f"{name.upper():<6} {meta['index']:<40} {seconds(meta['build_seconds'] or 0):>8} "
                     f"{_mib(meta['bytes']):>14}")
    lines.append("")
    lines.append(f"{'pair':<10} {'search params':<34} {'recall@10 uniform':>18} {'by frequency':>13} {'us/query':>9} "
                 f"{'answer table':>13}")
    for name, p in s["pairs"].items():
        params = "exact" if p.get("exact") else ", ".join(f"{k}={v}" for k, v in p.get("params", {}).items())
        us = p.get("microseconds_per_query")
        rows = p.get("answer_rows")
        lines.append(f"{name.upper().replace('-', '->'):<10} {params:<34} {p.get('recall_uniform', 0):>18.3f} "
                     f"{p.get('recall_frequency', 0):>13.3f} {'' if us is None else f'{us:.0f}':>9} "
                     f"{f'{rows:,} words' if rows else '':>13}")
        if "tail_params" in p:  # the words past the answer table, tuned on their own
            tail = ", ".join(f"{k}={v}" for k, v in p["tail_params"].items())
            tail_us = p.get("tail_microseconds_per_query")
            lines.append(f"{'  past it':<10} {tail:<34} {p.get('tail_recall_uniform', 0):>18.3f} "
                         f"{p.get('tail_recall_frequency', 0):>13.3f} {'' if tail_us is None else f'{tail_us:.0f}':>9}")
    return "\n".join(lines)
