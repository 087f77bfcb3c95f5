"""Fault tests: real masters, workers and etcd, killed, paused, restarted and cut off.

Each test starts a cluster of its own (a fault leaves it in no shape to share) with a short
--worker-ttl so that deaths are noticed in seconds. The etcd helpers live beside the other
cluster tests (tests/cluster/etcd_server.py): that folder is put on the import path here.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "cluster"))
