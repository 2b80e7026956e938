"""The bundle manifest, typed: what a bundle holds, how it was built and tuned, and the checksum of every file.

One class per part, each with one ``to_dict`` and one ``from_dict``; the JSON on disk is ``Manifest.to_dict()``.
Every field of a part survives a round trip, and a key the reader does not know is refused with a sentence naming
it (a newer writer must raise ``format_version``).

Format versions:
    1  the manifest lists every data file with its size and sha256.
    2  as 1, plus ``content_id``: the sha256 of the manifest's own canonical JSON without that field, so that the
       bundle verifies as a whole (a changed byte in the manifest is refused like a changed byte in a data file)
       and a server can say which bundle it serves.
The reader reads both; the writer writes the newest.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from dualvec.kernel.ann import IndexSpec, SearchParams
from dualvec.kernel.errors import BundleError

FORMAT_NAME = "dualvec-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def _known(cls, data: Any, where: str) -> dict:
    """The keys of ``data`` that are fields of dataclass ``cls``; a key it does not know is refused."""
    if not isinstance(data, dict):
        raise BundleError(f"manifest field {where!r} should be an object, not {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise BundleError(f"manifest field {where!r} has keys this dualvec does not know: {', '.join(unknown)}")
    return dict(data)


@dataclass(frozen=True)
class TuningConfig:
    """How the build tunes each pair's query parameters: what it aims for and how many queries it samples (per
    query distribution). Recorded whole in the manifest, so that a pair can be re-tuned the same way."""

    target_recall: float = 0.95
    k: int = 10
    tune_queries: int = 400
    eval_queries: int = 1000
    hub_queries: int = 3000
    hub_depth: int = 50
    max_hubs: int = 32768
    margin: float = 0.01
    timing_queries: int = 256  # a median of 64 was seen 30-50 % off on a shared machine
    seed: int = 7

    @classmethod
    def from_dict(cls, data: dict, where: str = "tuning") -> "TuningConfig":
        return cls(**_known(cls, data, where))


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle: its size in bytes and hex sha256."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class IndexEntry:
    """One space's index: its build parameters, a description, how long it took, and its file (None: exact)."""

    spec: IndexSpec
    description: str = ""
    build_seconds: float = 0.0
    file: str | None = None

    def to_dict(self) -> dict:
        return {"spec": asdict(self.spec), "description": self.description, "build_seconds": self.build_seconds,
                "file": self.file}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "IndexEntry":
        data = _known(cls, data, where)
        data["spec"] = IndexSpec(**_known(IndexSpec, data.get("spec", {}), f"{where}.spec"))
        return cls(**data)


@dataclass(frozen=True)
class PairEntry:
    """One query pair's tuned parameters and the recall@k measured on held-out queries at build."""

    params: SearchParams = field(default_factory=SearchParams)
    recall_uniform: float | None = None
    recall_frequency: float | None = None
    reached_target: bool | None = None
    exact: bool = False
    microseconds_per_query: float | None = None
    hubs_found: int = 0
    sweep: list[dict] = field(default_factory=list)
    answer_rows: int = 0  # words (the most frequent) whose one-word queries the pair's answer table answers
    answer_seconds: float = 0.0  # build time spent filling that table
    # the parameters of one-word queries for the words past the answer table, tuned on those words alone (None:
    # the pair's params), with their held-out recall@k (uniform over those words / by frequency) and time
    tail_params: SearchParams | None = None
    tail_recall_uniform: float | None = None
    tail_recall_frequency: float | None = None
    tail_microseconds_per_query: float | None = None

    def to_dict(self) -> dict:
        out = {"params": self.params.to_dict(), "recall_uniform": self.recall_uniform,
               "recall_frequency": self.recall_frequency, "reached_target": self.reached_target,
               "exact": self.exact, "microseconds_per_query": self.microseconds_per_query,
               "hubs_found": self.hubs_found, "sweep": self.sweep}
        if self.answer_rows:
            out.update(answer_rows=self.answer_rows, answer_seconds=self.answer_seconds)
        if self.tail_params is not None:
            out.update(tail_params=self.tail_params.to_dict(), tail_recall_uniform=self.tail_recall_uniform,
                       tail_recall_frequency=self.tail_recall_frequency,
                       tail_microseconds_per_query=self.tail_microseconds_per_query)
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "PairEntry":
        data = _known(cls, data, where)
        data["params"] = SearchParams.from_dict(data.get("params", {}))
        if data.get("tail_params") is not None:
            data["tail_params"] = SearchParams.from_dict(data["tail_params"])
        return cls(**data)


@dataclass(frozen=True)
class BuildRecord:
    """How the build went: wall seconds, seconds per phase, peak memory, FAISS threads and version."""

    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    peak_memory_mib: float = 0.0
    faiss_threads: int = 0
    faiss_version: str = ""

    @classmethod
    def from_dict(cls, data: dict, where: str = "build") -> "BuildRecord":
        return cls(**_known(cls, data, where))


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json. ``spaces``: "in" and, unless the bundle is IN-only, "out"; ``pairs`` by pair name
    ("in-out"); ``files`` by file name; ``source`` and ``tokenizer`` are the readers' and the tokenizer's own
    records, kept as they give them."""

    vocab_size: int
    dim: int
    spaces: list[str]
    indexes: dict[str, IndexEntry]
    files: dict[str, FileEntry]
    source: dict = field(default_factory=dict)
    pairs: dict[str, PairEntry] = field(default_factory=dict)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    tokenizer: dict | None = None
    build: BuildRecord = field(default_factory=BuildRecord)
    counts_known: bool = True
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    dualvec_version: str = ""
    created: str = ""
    content_id: str = ""

    @property
    def has_out(self) -> bool:
        return "out" in self.spaces

    def space_bytes(self, space: str) -> int:
        """Bytes on disk of one space's files (vectors, norms, index)."""
        return sum(meta.bytes for name, meta in self.files.items() if name.startswith(f"{space}."))

    def to_dict(self) -> dict:
        """The JSON object written to manifest.json (content_id included once it is set)."""
        out = {"format": self.format, "format_version": self.format_version,
               "dualvec_version": self.dualvec_version, "created": self.created, "source": self.source,
               "vocab_size": self.vocab_size, "dim": self.dim, "spaces": list(self.spaces),
               "has_out": self.has_out, "counts_known": self.counts_known,
               "indexes": {name: entry.to_dict() for name, entry in self.indexes.items()},
               "pairs": {name: entry.to_dict() for name, entry in self.pairs.items()},
               "tuning": asdict(self.tuning), "tokenizer": self.tokenizer, "build": asdict(self.build),
               "files": {name: asdict(meta) for name, meta in sorted(self.files.items())}}
        if self.content_id:
            out["content_id"] = self.content_id
        return out

    def sealed(self) -> "Manifest":
        """This manifest with its content_id set: the sha256 of its canonical JSON without content_id."""
        return replace(self, content_id=canonical_sha256(replace(self, content_id="").to_dict()))

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest.json") -> "Manifest":
        """A manifest from its JSON object; raises BundleError naming the first field it cannot take."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            found = data.get("format") if isinstance(data, dict) else None
            raise BundleError(f"{where} is not a dualvec bundle manifest (format is {found!r})")
        data = dict(data)
        data.pop("has_out", None)  # derived from spaces
        for key in ("vocab_size", "dim", "spaces", "indexes", "files"):
            if key not in data:
                raise BundleError(f"{where} lacks the field {key!r}")
        data = _known(cls, data, where)
        try:
            data["indexes"] = {name: IndexEntry.from_dict(entry, f"indexes.{name}")
                               for name, entry in data["indexes"].items()}
            data["pairs"] = {name: PairEntry.from_dict(entry, f"pairs.{name}")
                             for name, entry in data.get("pairs", {}).items()}
            data["files"] = {name: FileEntry(**_known(FileEntry, meta, f"files.{name}"))
                             for name, meta in data["files"].items()}
            data["tuning"] = TuningConfig.from_dict(data.get("tuning", {}))
            data["build"] = BuildRecord.from_dict(data.get("build", {}))
        except (TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{where} has a malformed field ({exc})") from None
        return cls(**data)


def canonical_sha256(obj: Any) -> str:
    """Hex sha256 of a JSON value written canonically (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
