"""The kernel that the indexer and the server both stand on, plain Python + NumPy + FAISS (no gRPC):

    spaces      the two spaces and the four ordered pairs; parsing of their names
    errors      the domain exceptions (the servicer maps them to status codes in one table)
    results     the small result types (neighbours, document scores, vectors)
    tokenizer   the one tokenizer of corpora, queries and documents
    manifest    the typed, versioned bundle manifest
    bundle      the bundle format: the one atomic writer and the one verifying reader
    ann         index kinds, their build, and how one space is searched with a pair's tuned parameters
    hubs        the hub scan of cross-space pairs: found at build, merged at search
    truth       exact ground truth and recall@10 (ann-benchmarks' tie rule)
    search      the search engine: words or vectors in, top-k neighbours out, with limits
    desm        Dual Embedding Space Model document scores
    bm25        BM25 scores for the DESM mixture
"""
