"""A synthetic landing zone with known truth: `clinfuse generate` (docs/synthetic.md)."""

from clinfuse.synthetic.generate import generate
from clinfuse.synthetic.population import simulate_truth
from clinfuse.synthetic.tasks import TASKS, Task, get_task
from clinfuse.synthetic.truth import truth_dir

__all__ = ["TASKS", "Task", "generate", "get_task", "simulate_truth", "truth_dir"]
