"""How Ray reports that a worker process is gone. The driver restarts the run
from its newest checkpoint, the rollout group replaces the worker and the
scheduler client restarts the scheduler actor: whichever way the process died."""

from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

# An actor died (crash, kill, lost node: RayActorError), or the process running a
# call was killed by Ray's memory monitor (OutOfMemoryError) or crashed with it.
WORKER_DIED = (RayActorError, OutOfMemoryError, WorkerCrashedError, NodeDiedError)
