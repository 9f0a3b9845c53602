"""Runtimes: the interface (base), an in-memory one for unit tests (fake) and the Docker one
(dockerd, the only package that imports the docker SDK)."""
