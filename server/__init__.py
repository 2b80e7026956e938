"""The query side: the search core (search.py), DESM (desm.py), and the gRPC servicer and server (servicer.py,
app.py). The core modules know nothing of gRPC."""
