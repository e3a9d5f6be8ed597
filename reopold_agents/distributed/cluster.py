"""Joining or starting the Ray cluster a RayBackend runs on."""

from __future__ import annotations

import os
from typing import Any

from reopold_agents.config.distributed import RayConfig


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # the `ray` extra is optional
        raise ImportError("distributed.backend=ray needs Ray: pip install -e '.[ray]'") from exc
    return ray


def _loopback_only() -> None:
    """Make a local cluster listen on 127.0.0.1 only (GCS, raylet, workers).

    On Linux Ray uses the host's routable address even for a one-machine cluster; its switch for
    loopback is an env var read at import time, so set it for the processes Ray spawns and for this
    (already importing) process. A value the user set is respected.
    """
    if "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in os.environ:
        return
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # layout changed: children still get the env var
        pass


def connect(dcfg: RayConfig) -> bool:
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
        _loopback_only()
        ray.init(num_cpus=int(dcfg.local_num_cpus), include_dashboard=False, runtime_env={"env_vars": env_vars})
    return True
