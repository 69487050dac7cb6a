"""Calls to actors that may be restarting: retried until the actor answers again."""

from __future__ import annotations

import logging
import time
import warnings

import ray
from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError

log = logging.getLogger(__name__)

# A restarting actor raises these; with `max_restarts` it comes back with the same handle.
ACTOR_ERRORS = (RayActorError, ActorUnavailableError, ObjectLostError)


def call_with_retry(make_call, what: str, timeout_s: float = 600.0):
    """`ray.get(make_call())`, re-issuing the call while the actor is down, up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            return ray.get(make_call())
        except ACTOR_ERRORS as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def was_restarted() -> bool:
    """Inside an actor: whether Ray restarted it (its constructor is running again after a death)."""
    with warnings.catch_warnings():  # Ray 2.60 warns about its own use of a deprecated property here
        warnings.simplefilter("ignore")
        return ray.get_runtime_context().was_current_actor_reconstructed
