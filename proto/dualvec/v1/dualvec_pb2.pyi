from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Space(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPACE_UNSPECIFIED: _ClassVar[Space]
    IN: _ClassVar[Space]
    OUT: _ClassVar[Space]
SPACE_UNSPECIFIED: Space
IN: Space
OUT: Space

class SearchRequest(_message.Message):
    __slots__ = ("positive", "negative", "vector", "query_space", "target_space", "k", "include_query_words", "restrict_vocab", "exact", "model")
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    QUERY_SPACE_FIELD_NUMBER: _ClassVar[int]
    TARGET_SPACE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_QUERY_WORDS_FIELD_NUMBER: _ClassVar[int]
    RESTRICT_VOCAB_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    positive: _containers.RepeatedScalarFieldContainer[str]
    negative: _containers.RepeatedScalarFieldContainer[str]
    vector: _containers.RepeatedScalarFieldContainer[float]
    query_space: Space
    target_space: Space
    k: int
    include_query_words: bool
    restrict_vocab: int
    exact: bool
    model: str
    def __init__(self, positive: _Optional[_Iterable[str]] = ..., negative: _Optional[_Iterable[str]] = ..., vector: _Optional[_Iterable[float]] = ..., query_space: _Optional[_Union[Space, str]] = ..., target_space: _Optional[_Union[Space, str]] = ..., k: _Optional[int] = ..., include_query_words: _Optional[bool] = ..., restrict_vocab: _Optional[int] = ..., exact: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class Neighbor(_message.Message):
    __slots__ = ("word", "id", "score")
    WORD_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    word: str
    id: int
    score: float
    def __init__(self, word: _Optional[str] = ..., id: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("neighbors",)
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    neighbors: _containers.RepeatedCompositeFieldContainer[Neighbor]
    def __init__(self, neighbors: _Optional[_Iterable[_Union[Neighbor, _Mapping]]] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class QueryError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SearchStreamResponse(_message.Message):
    __slots__ = ("index", "response", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    response: SearchResponse
    error: QueryError
    def __init__(self, index: _Optional[int] = ..., response: _Optional[_Union[SearchResponse, _Mapping]] = ..., error: _Optional[_Union[QueryError, _Mapping]] = ...) -> None: ...

class GetVectorsRequest(_message.Message):
    __slots__ = ("words", "space", "raw", "model")
    WORDS_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    words: _containers.RepeatedScalarFieldContainer[str]
    space: Space
    raw: bool
    model: str
    def __init__(self, words: _Optional[_Iterable[str]] = ..., space: _Optional[_Union[Space, str]] = ..., raw: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class WordVector(_message.Message):
    __slots__ = ("word", "id", "vector", "raw_vector", "norm", "count")
    WORD_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    RAW_VECTOR_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    word: str
    id: int
    vector: _containers.RepeatedScalarFieldContainer[float]
    raw_vector: _containers.RepeatedScalarFieldContainer[float]
    norm: float
    count: int
    def __init__(self, word: _Optional[str] = ..., id: _Optional[int] = ..., vector: _Optional[_Iterable[float]] = ..., raw_vector: _Optional[_Iterable[float]] = ..., norm: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class GetVectorsResponse(_message.Message):
    __slots__ = ("vectors",)
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    vectors: _containers.RepeatedCompositeFieldContainer[WordVector]
    def __init__(self, vectors: _Optional[_Iterable[_Union[WordVector, _Mapping]]] = ...) -> None: ...

class SpacedWord(_message.Message):
    __slots__ = ("word", "space")
    WORD_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    word: str
    space: Space
    def __init__(self, word: _Optional[str] = ..., space: _Optional[_Union[Space, str]] = ...) -> None: ...

class WordPair(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: SpacedWord
    b: SpacedWord
    def __init__(self, a: _Optional[_Union[SpacedWord, _Mapping]] = ..., b: _Optional[_Union[SpacedWord, _Mapping]] = ...) -> None: ...

class SimilarityRequest(_message.Message):
    __slots__ = ("pairs", "model")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[WordPair]
    model: str
    def __init__(self, pairs: _Optional[_Iterable[_Union[WordPair, _Mapping]]] = ..., model: _Optional[str] = ...) -> None: ...

class SimilarityResponse(_message.Message):
    __slots__ = ("similarities",)
    SIMILARITIES_FIELD_NUMBER: _ClassVar[int]
    similarities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, similarities: _Optional[_Iterable[float]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "tokens")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreDocumentsRequest(_message.Message):
    __slots__ = ("query", "query_tokens", "documents", "query_space", "document_space", "bm25_weight", "model")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    QUERY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    QUERY_SPACE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_SPACE_FIELD_NUMBER: _ClassVar[int]
    BM25_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    query: str
    query_tokens: _containers.RepeatedScalarFieldContainer[str]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    query_space: Space
    document_space: Space
    bm25_weight: float
    model: str
    def __init__(self, query: _Optional[str] = ..., query_tokens: _Optional[_Iterable[str]] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., query_space: _Optional[_Union[Space, str]] = ..., document_space: _Optional[_Union[Space, str]] = ..., bm25_weight: _Optional[float] = ..., model: _Optional[str] = ...) -> None: ...

class DocumentScore(_message.Message):
    __slots__ = ("id", "score", "query_words_found", "document_words_found", "desm", "bm25")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    QUERY_WORDS_FOUND_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_WORDS_FOUND_FIELD_NUMBER: _ClassVar[int]
    DESM_FIELD_NUMBER: _ClassVar[int]
    BM25_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    query_words_found: int
    document_words_found: int
    desm: float
    bm25: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., query_words_found: _Optional[int] = ..., document_words_found: _Optional[int] = ..., desm: _Optional[float] = ..., bm25: _Optional[float] = ...) -> None: ...

class ScoreDocumentsResponse(_message.Message):
    __slots__ = ("scores", "bm25_document_frequencies")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    BM25_DOCUMENT_FREQUENCIES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[DocumentScore]
    bm25_document_frequencies: str
    def __init__(self, scores: _Optional[_Iterable[_Union[DocumentScore, _Mapping]]] = ..., bm25_document_frequencies: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SpaceIndexInfo(_message.Message):
    __slots__ = ("space", "kind", "description", "bytes")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    space: Space
    kind: str
    description: str
    bytes: int
    def __init__(self, space: _Optional[_Union[Space, str]] = ..., kind: _Optional[str] = ..., description: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class PairInfo(_message.Message):
    __slots__ = ("query_space", "target_space", "search_params", "recall_uniform", "recall_frequency")
    QUERY_SPACE_FIELD_NUMBER: _ClassVar[int]
    TARGET_SPACE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_PARAMS_FIELD_NUMBER: _ClassVar[int]
    RECALL_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    RECALL_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    query_space: Space
    target_space: Space
    search_params: str
    recall_uniform: float
    recall_frequency: float
    def __init__(self, query_space: _Optional[_Union[Space, str]] = ..., target_space: _Optional[_Union[Space, str]] = ..., search_params: _Optional[str] = ..., recall_uniform: _Optional[float] = ..., recall_frequency: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "vocab_size", "dim", "spaces", "indexes", "pairs", "format_version", "dualvec_version", "source", "source_sha256", "tokenizer", "max_k", "max_batch", "max_documents", "max_document_tokens", "models", "has_document_frequencies", "content_id", "created", "loaded_at", "max_results", "max_words", "max_word_bytes", "max_query_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SPACES_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DUALVEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    HAS_DOCUMENT_FREQUENCIES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUERY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    vocab_size: int
    dim: int
    spaces: _containers.RepeatedScalarFieldContainer[Space]
    indexes: _containers.RepeatedCompositeFieldContainer[SpaceIndexInfo]
    pairs: _containers.RepeatedCompositeFieldContainer[PairInfo]
    format_version: int
    dualvec_version: str
    source: str
    source_sha256: str
    tokenizer: str
    max_k: int
    max_batch: int
    max_documents: int
    max_document_tokens: int
    models: _containers.RepeatedScalarFieldContainer[str]
    has_document_frequencies: bool
    content_id: str
    created: str
    loaded_at: str
    max_results: int
    max_words: int
    max_word_bytes: int
    max_query_tokens: int
    def __init__(self, model: _Optional[str] = ..., vocab_size: _Optional[int] = ..., dim: _Optional[int] = ..., spaces: _Optional[_Iterable[_Union[Space, str]]] = ..., indexes: _Optional[_Iterable[_Union[SpaceIndexInfo, _Mapping]]] = ..., pairs: _Optional[_Iterable[_Union[PairInfo, _Mapping]]] = ..., format_version: _Optional[int] = ..., dualvec_version: _Optional[str] = ..., source: _Optional[str] = ..., source_sha256: _Optional[str] = ..., tokenizer: _Optional[str] = ..., max_k: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_documents: _Optional[int] = ..., max_document_tokens: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., has_document_frequencies: _Optional[bool] = ..., content_id: _Optional[str] = ..., created: _Optional[str] = ..., loaded_at: _Optional[str] = ..., max_results: _Optional[int] = ..., max_words: _Optional[int] = ..., max_word_bytes: _Optional[int] = ..., max_query_tokens: _Optional[int] = ...) -> None: ...
