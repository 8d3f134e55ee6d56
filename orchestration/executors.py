"""The executor that the code location's jobs run on, chosen by $CLINFUSE_EXECUTOR.

The job definitions (orchestration/jobs.py) never name an executor: `dg.Definitions(executor=)`
gives every job the one chosen here, so `dagster dev`, the daemon's schedule and sensor runs and
`dagster job execute` all run the same jobs on whichever is set (docs/deploy.md):

- unset or `multiprocess`: Dagster's default, one process per step on this machine;
- `celery`: dagster-celery's `celery_executor`, each step a Celery task that a worker
  (`celery -A dagster_celery.app worker`) runs; broker and result backend from Celery's own
  variables, CELERY_BROKER_URL and CELERY_RESULT_BACKEND, which the workers read too;
- `k8s`: dagster-k8s's `k8s_job_executor`, each step a Kubernetes Job, the training steps on
  a GPU node (`GPU_STEP_K8S_CONFIG`).

`clinfuse run` ignores it: it runs `execute_in_process`, which is always in-process.
The training steps keep their Dagster pool (`gpu`) under every one of them: each executor claims
a pool slot from the instance before it hands a step on (`concurrency.pools` in dagster.yaml).
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_VARIABLE = "CLINFUSE_EXECUTOR"
EXECUTORS = ("multiprocess", "celery", "k8s")

# The ops of the `gpu` pool (assets/training/assets.py): for an asset, the op is the asset's name.
GPU_STEPS = ("modality_models", "fusion_model")
# dagster-k8s's per-step configuration (USER_DEFINED_K8S_JOB_CONFIG_SCHEMA) for them: one GPU,
# on a node that NVIDIA's GPU feature discovery labels, tolerating the usual GPU-node taint.
GPU_STEP_K8S_CONFIG = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
        }
    },
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def celery() -> dg.ExecutorDefinition:
    """dagster-celery's executor, pointed at the broker and backend its workers use."""
    from dagster_celery import celery_executor

    return celery_executor.configured(
        {
            "broker": {"env": "CELERY_BROKER_URL"},
            "backend": {"env": "CELERY_RESULT_BACKEND"},
        },
        name="celery",
    )


def k8s() -> dg.ExecutorDefinition:
    """dagster-k8s's executor: one Kubernetes Job per step, the training steps on a GPU."""
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(
        {"per_step_k8s_config": dict.fromkeys(GPU_STEPS, GPU_STEP_K8S_CONFIG)}, name="k8s"
    )


def executor_from_environment() -> dg.ExecutorDefinition | None:
    """The executor $CLINFUSE_EXECUTOR names; None (Dagster's multiprocess default) when unset."""
    name = os.environ.get(EXECUTOR_VARIABLE, "").strip().lower() or "multiprocess"
    if name == "celery":
        return celery()
    if name == "k8s":
        return k8s()
    if name == "multiprocess":
        return None
    raise ValueError(f"{EXECUTOR_VARIABLE}={name!r}: expected one of {', '.join(EXECUTORS)}")
