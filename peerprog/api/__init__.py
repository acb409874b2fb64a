"""The local API: an HTTP server on the node's unix socket, and the clients apps use.

Apps import :class:`peerprog.Client` (sync) or :class:`peerprog.AsyncClient`; the daemon
runs :class:`peerprog.api.server.ApiServer`. This package's ``__init__`` imports neither, so
that ``import peerprog`` stays light.
"""
