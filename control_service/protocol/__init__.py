"""What both sides of the ZMQ link share, and nothing else: the wire codec and its vocabulary.

Imports neither gRPC nor the server, so an engine can use it with pyzmq alone.
"""
