"""Talking to model endpoints, split by job: `transport` (one streamed request), `completion`
(stream assembly, reasoning split), `scheduling` (prioritised slots over replicas, shared by
shards), `broker` (the same across processes, as a Ray actor), `cache` (response store, request
keys) and `client` (the `ModelClient` facade stages call)."""

from .cache import ResponseStore, canonical_messages, request_key
from .client import EndpointCheckFailed, EndpointStats, ModelClient, RequestFailed
from .completion import parse_completion, split_reasoning
from .scheduling import PrioritySlots, ReplicaScheduler, shared_scheduler

__all__ = ["EndpointCheckFailed", "EndpointStats", "ModelClient", "PrioritySlots", "ReplicaScheduler",
           "RequestFailed", "ResponseStore", "canonical_messages", "parse_completion", "request_key",
           "shared_scheduler", "split_reasoning"]
