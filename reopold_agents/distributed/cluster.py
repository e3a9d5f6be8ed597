"""Joining or starting the Ray cluster a RayBackend runs on."""

from __future__ import annotations

import os
from typing import Any


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # the `ray` extra is optional
        raise ImportError("distributed.backend=ray needs Ray: pip install -e '.[ray]'") from exc
    return ray


def connect(dcfg: Any) -> bool:
    """Connect to ``dcfg.address`` or start a local cluster; return True when this call started Ray
    (so the backend also stops it). An already initialised Ray (tests, notebooks) is reused as is."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    # Workers must import this repo's packages: an editable install does it on one machine; on a
    # multi-node cluster install the package on every node (docs/distributed.md).
    env_vars = {"TOKENIZERS_PARALLELISM": "false"}
    if os.environ.get("REOPOLD_CACHE"):
        env_vars["REOPOLD_CACHE"] = os.environ["REOPOLD_CACHE"]
    if dcfg.address:
        ray.init(address=dcfg.address, runtime_env={"env_vars": env_vars}, log_to_driver=True)
    else:
        ray.init(
            num_cpus=int(dcfg.local_num_cpus),
            include_dashboard=False,
            runtime_env={"env_vars": env_vars},
            _node_ip_address="127.0.0.1",  # a local cluster listens on loopback only
        )
    return True
