"""Memory is given back between the steps of a job (they share one process)."""
import numpy as np

from recs_assets import memory, orchestration


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_every_job_releases_memory_after_each_step():
    for job in (orchestration.models_job, orchestration.topn_job, orchestration.publish_job):
        assert {h.name for h in job.hooks} == {"release_memory_after_success", "release_memory_after_failure"}


def test_release_frees_arrays_held_only_by_a_reference_cycle():
    import gc

    gc.disable()  # so that only release() collects the cycle
    try:
        holder = {"array": np.ones(64 * 2**20 // 8)}  # 64 MiB, touched
        holder["self"] = holder
        del holder
        before = _rss()
        memory.release()
        assert before - _rss() > 48 * 2**20
    finally:
        gc.enable()
