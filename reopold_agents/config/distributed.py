"""Config section `distributed`: where the roles (rollout, teacher, learner) run; never *what* they compute.

``backend=single`` keeps every role in this process (the default); ``backend=ray`` places rollout
workers, teacher scorers and the learner as Ray actors, configured by the ``ray`` sub-section (read
only with that choice: setting a ``distributed.ray.*`` key away from its default with ``backend=single``
fails naming it). The keys at the top level apply to both placements. Read by ``reopold_agents.distributed`` (backends, actors, the accelerate learner).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

BACKENDS = ("single", "ray")
MIXED_PRECISION = ("no", "bf16", "fp16")
LEARNER_STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class RayConfig:
    """Ray placement: cluster, actor counts and resources, fault tolerance."""

    address: Optional[str] = None  # Ray cluster address ("auto", "ray://host:10001"); None: start a local one
    local_num_cpus: int = 2  # CPUs a locally started Ray cluster advertises (ignored with `address`)
    num_rollout_workers: int = 1  # RolloutWorker actors, each with its own engine and envs/sandboxes
    num_teacher_workers: int = 1  # TeacherWorker actors scoring shards of the batch
    num_learner_workers: int = 1  # learner ranks (one process each: DDP/FSDP over ranks)
    cpus_per_rollout_worker: float = 1.0
    gpus_per_rollout_worker: float = 0.0
    cpus_per_teacher: float = 0.0  # 0: scoring is bursty, do not hold a CPU slot for it
    gpus_per_teacher: float = 0.0
    cpus_per_learner: float = 0.0  # per learner rank
    gpus_per_learner: float = 0.0  # per learner rank (1 for FSDP: one GPU per process)
    max_restarts: int = 3  # Ray restarts of a crashed actor (per actor)
    max_chunk_retries: int = 3  # times one chunk may be redone after worker crashes before giving up
    restart_timeout_s: float = 120.0  # how long to wait for a crashed worker to come back

    def check(self) -> None:
        for key in ("num_rollout_workers", "num_teacher_workers", "num_learner_workers", "local_num_cpus"):
            if getattr(self, key) < 1:
                raise ValueError(f"ray.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("max_restarts", "max_chunk_retries"):
            if getattr(self, key) < 0:
                raise ValueError(f"ray.{key}: must be >= 0, got {getattr(self, key)}")
        for f in fields(self):
            if f.name.startswith(("cpus_", "gpus_")) and getattr(self, f.name) < 0:
                raise ValueError(f"ray.{f.name}: must be >= 0, got {getattr(self, f.name)}")
        if self.restart_timeout_s <= 0:
            raise ValueError(f"ray.restart_timeout_s: must be > 0, got {self.restart_timeout_s}")


@dataclass
class DistributedConfig:
    """Placement (``backend`` and its ``ray`` section) and the keys every placement reads."""

    backend: str = "single"  # single | ray
    rollout_chunk_size: int = 16  # tasks per unit of work: the seeding unit, load balancing and the redo unit
    async_rollout: bool = False  # rollouts of step k+1 overlap the update of step k (policy lag 1)
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate autocast + grad scaling for fp16)
    grad_accumulation: int = 1  # micro-batches per optimiser step in the accelerate learner
    learner_strategy: str = "auto"  # auto (fsdp on >1 GPU process, else ddp) | ddp | fsdp
    # torch intra-op threads of the run's own process (driver and in-process roles); 0: OMP_NUM_THREADS if
    # set, else the cores this process may run on; never more than those (reopold_agents/threads.py).
    # Ray actors take theirs from ray.cpus_per_<role>
    threads: int = 0
    ray: RayConfig = field(default_factory=RayConfig)  # read only with backend=ray (distributed=ray)

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.learner_strategy not in LEARNER_STRATEGIES:
            raise ValueError(
                f"learner_strategy: must be one of {', '.join(LEARNER_STRATEGIES)}, got {self.learner_strategy!r}"
            )
        for key in ("rollout_chunk_size", "grad_accumulation"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.threads < 0:
            raise ValueError(f"threads: must be >= 0 (0: the cores this process may use), got {self.threads}")
        if self.backend == "ray":
            self.ray.check()
            return
        default = RayConfig()
        for f in fields(self.ray):
            if getattr(self.ray, f.name) != getattr(default, f.name):
                raise ValueError(f"ray.{f.name}: the ray section applies only to backend=ray (use distributed=ray)")

    @property
    def learner_ranks(self) -> int:
        return self.ray.num_learner_workers if self.backend == "ray" else 1

    @property
    def uses_accelerate(self) -> bool:
        """Whether the learner needs accelerate (several ranks, mixed precision, accumulation or FSDP);
        otherwise the plain ``Learner`` runs, with no accelerate state."""
        import os

        return (self.learner_ranks > 1 or self.mixed_precision != "no" or self.grad_accumulation > 1
                or self.learner_strategy == "fsdp" or int(os.environ.get("WORLD_SIZE", "1")) > 1)
