"""The benchmark (`python -m bench`, see bench/__main__.py) and the soak (`python -m bench.soak`)."""
