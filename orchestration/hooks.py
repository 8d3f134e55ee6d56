"""Run progress on the console: "stage 7/34 done: cohort" as each step finishes."""

import dagster as dg

_done: dict[str, int] = {}


@dg.success_hook(name="stage_progress")
def stage_progress(context: dg.HookContext) -> None:
    """Counts finished steps per run. Counted in the process that runs the step, so the count is
    the run's with the in-process executor (`clinfuse run`) and per worker otherwise."""
    _done[context.run_id] = _done.get(context.run_id, 0) + 1
    total = len(context.instance.get_run_by_id(context.run_id).step_keys_to_execute or [])
    of_total = f"/{total}" if total else ""
    context.log.info(f"stage {_done[context.run_id]}{of_total} done: {context.step_key}")
