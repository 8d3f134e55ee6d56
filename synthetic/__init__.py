"""A synthetic landing zone with known truth: `clinfuse generate` (docs/synthetic.md)."""

from clinfuse.synthetic.generate import generate
from clinfuse.synthetic.population import simulate_truth
from clinfuse.synthetic.truth import truth_dir

__all__ = ["generate", "simulate_truth", "truth_dir"]
