"""The offline indexer: read a model's two spaces, normalize them, build one FAISS index per space, tune each
query pair against exact search, and write a bundle (dualvec.kernel.bundle). Never imports dualvec.server."""
