"""Prometheus metrics of one service instance (its own registry, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions_active = Gauge("agentbox_sessions_active", "Live sessions",
                                     registry=self.registry)
        self.pool_size = Gauge("agentbox_pool_ready", "Ready kernels in the warm pool",
                               registry=self.registry)
        self.executions = Counter("agentbox_executions", "Executions by status", ["status"],
                                  registry=self.registry)
        self.duration = Histogram(
            "agentbox_execution_duration_seconds", "Execution wall time",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry)
        self.kernel_deaths = Counter("agentbox_kernel_deaths", "Kernels that died",
                                     registry=self.registry)
        self.timeouts = Counter("agentbox_timeouts", "Executions ended by their time limit",
                                ["ended_by"], registry=self.registry)

    def record(self, result: dict[str, object]) -> None:
        status = str(result["status"])
        self.executions.labels(status=status).inc()
        self.duration.observe(float(result.get("duration_ms", 0.0)) / 1000)  # type: ignore[arg-type]
        if status == "died":
            self.kernel_deaths.inc()
        timeout = result.get("timeout")
        if status == "timeout" and isinstance(timeout, dict):
            self.timeouts.labels(ended_by=str(timeout.get("ended_by"))).inc()
