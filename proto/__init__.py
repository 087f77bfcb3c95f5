"""mooncake_proto: everything two mooncake processes must agree on.

The gRPC contract (`mooncake.proto` and its checked-in stubs), error codes and exceptions,
the data-plane grant and wire formats, and the process plumbing every daemon shares.
"""
