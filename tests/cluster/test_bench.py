"""mooncake-bench runs end to end (performance is read from its output, never asserted here)."""
import json
import subprocess
import sys

from mooncake_client.bench import OPS
from mooncake_client.local_cluster import LocalCluster


def test_bench_local_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mooncake_client.bench", "--local", "--sizes", "4KiB,1MiB",
         "--volume", "2MiB", "--max-count", "20", "--dram", "64MiB", "--repeat", "2",
         "--ssd", "64MiB", "--ssd-dram", "4MiB", "--ssd-sizes", "1MiB", "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "GB/s" in proc.stdout and "p99 us" in proc.stdout
    assert "[" in proc.stderr and "4/4" in proc.stderr  # the progress bar reached the end
    assert "2/2 tcp 1MiB from SSD" in proc.stderr
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {(r["op"], r["transport"], r["size_bytes"]) for r in rows} == {
        (op, t, s) for op in OPS for t in ("shm", "tcp") for s in (4096, 1 << 20)} | {
        ("ssd_get_into", t, 1 << 20) for t in ("shm", "tcp")}  # read back from the SSD tier
    assert all(r["gb_per_s"] > 0 and r["p50_us"] > 0 and r["count"] >= 8 for r in rows)
    # every store row has its same-size baseline measured in the same run
    assert {(b["transport"], b["size_bytes"]) for b in report["baselines"]} == {
        (t, s) for t in ("memcpy", "memcpy-w", "socket") for s in (4096, 1 << 20)}
    assert all(r["x_baseline"] is not None for r in rows)
    assert all(r["repeats"] == 2 for r in rows + report["baselines"]
               if r["op"] != "ssd_get_into")  # medians of two runs
    assert "issue 3 targets" in proc.stdout and len(report["targets"]) == 7


def test_bench_puts_the_segments_where_shm_root_says(tmp_path):
    """--shm-root (a tmpfs with huge pages, say): the workers' DRAM segment files go there,
    the shm rows read them, and the JSON says where they were."""
    root = tmp_path / "segments"
    root.mkdir()
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mooncake_client.bench", "--local", "--sizes", "64KiB",
         "--transports", "shm", "--volume", "1MiB", "--max-count", "16", "--dram", "32MiB",
         "--ssd", "0", "--shm-root", str(root), "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["shm_root"] == str(root)
    assert {r["transport"] for r in report["rows"]} == {"shm"}
    assert list(root.iterdir()) == []  # the cluster's directory there is gone with it
    with LocalCluster(workers=1, dram="16MiB", shm_root=str(root)) as cluster:
        (made,) = root.iterdir()
        assert "mooncake-worker-0-dram" in [p.name for p in made.iterdir()]
        assert cluster.shm_dir == str(made)
    assert list(root.iterdir()) == []
    refused = subprocess.run(
        [sys.executable, "-m", "mooncake_client.bench", "--master", "127.0.0.1:1",
         "--shm-root", str(root)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--shm-root is for --local" in refused.stderr
