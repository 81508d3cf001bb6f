"""Two Ray nodes: the pool spreads its replicas, and videos are processed on both nodes."""

from __future__ import annotations

import json

from pipeline.driver.job import EXIT_OK, run
from tests.helpers import make_video, synthetic_frames
from tests.pipeline.driver.propagate_support import job_spec, prompts_for, write_manifest


def test_two_nodes_share_the_work(tmp_path, ray_cluster):
    rows = []
    for i in range(4):
        frames = synthetic_frames(8, 64, 96, seed=20 + i)
        make_video(tmp_path / "videos" / f"n{i}.mp4", frames)
        rows += prompts_for(f"n{i}", f"videos/n{i}.mp4", frames, "box")
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    out = tmp_path / "out"
    second = ray_cluster.add_node(num_cpus=1)
    try:
        ray_cluster.wait_for_nodes()
        status = run(job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, num_workers=2))
    finally:
        ray_cluster.remove_node(second)

    assert status == EXIT_OK
    records = [json.loads(p.read_text()) for p in (out / "_state" / "done").iterdir()]
    assert len(records) == 4
    assert {r["node_id"] for r in records} == {ray_cluster.head_node.node_id, second.node_id}
    summary = json.loads((out / "summary.json").read_text())
    assert len({w["node_id"] for w in summary["workers"]}) == 2
