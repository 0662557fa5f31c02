"""A real multi-node Ray cluster on 127.0.0.1 for the tests: ``python -m tests.ray_cluster NODES``.

Ray's own cluster test utility (``ray.cluster_utils.Cluster``) starts a head and ``NODES − 1`` more
nodes, one CPU each, every process on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) and at
niceness 0, prints the address and waits. The fixture runs it in a session of its own and stops it by
that process group: every Ray process of the cluster, and nothing else.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                   "RAY_worker_niceness": "0"})


def main(nodes: int) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    time.sleep(3600)  # the fixture kills the group long before


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
