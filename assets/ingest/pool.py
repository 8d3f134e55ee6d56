"""The process pools of the DICOM and audio readers: one fork server, set up so workers start fast.

forkserver, not fork: the parent (Dagster) runs threads, and forking a threaded process can
deadlock. Workers fork from a server process instead, and whatever the server imported they
inherit for free (copy-on-write). Two things decide what that is, and both cost seconds of CPU
per worker, per ingest call, when they go wrong (measured: ~2 s per worker, a third of a
1,000-film DICOM ingest on two cores):

- A process has one fork server, and its preload list is read only when it starts: whichever
  reader starts it first decides what every later worker inherits. So both readers ask for the
  same list, `PRELOAD`: their modules and torch (a few seconds, once per process).
- Before its first task a worker re-runs the parent's main script (as `__mp_main__`) unless the
  server imported it, and CPython 3.11 never does: `ForkServer.ensure_running` keeps a
  `main_path` key of the preparation data, which `spawn.get_preparation_data` calls
  `init_main_from_path`, so `"__main__"` in a preload list has no effect. The re-run re-imports
  whatever the script imports that the server lacks (for the `clinfuse` or `dagster` console
  script: the whole CLI). The server therefore preloads the modules the main script imported
  (`main_imports`), which leaves the re-run nothing but a few definitions to execute.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from types import FunctionType, ModuleType

# The readers' modules (pydicom and its decoders; soundfile, soxr and librosa's feature stack)
# and torch, which the DICOM resize runs on.
PRELOAD = (
    "clinfuse.assets.ingest.dicom.reader",
    "clinfuse.assets.ingest.audio.features",
    "torch",
)
_MAIN_NAMES = ("__main__", "__mp_main__")


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` single-threaded processes forked from the shared fork server."""
    return ProcessPoolExecutor(workers, mp_context=pool_context(), initializer=init_worker)


def pool_context() -> BaseContext:
    """forkserver with `PRELOAD` and the main script's imports; spawn where there is none."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([*main_imports(), *PRELOAD])
    return context


def main_imports() -> list[str]:
    """Names of the modules the main script imported, itself or a name from it (`import x`,
    `from x import f`), as far as they can be imported by name: the server stops at any error
    but ImportError while preloading, so only modules already loaded here, with a spec, count."""
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) is None:  # python -c, a REPL: workers re-run nothing
        return []
    names = set()
    for value in vars(main).values():
        if isinstance(value, ModuleType):
            names.add(value.__name__)
        elif isinstance(value, type | FunctionType):
            names.add(value.__module__)
    return sorted(name for name in names if _importable(name))


def _importable(name: str) -> bool:
    module = sys.modules.get(name)
    return name not in _MAIN_NAMES and module is not None and module.__spec__ is not None


def init_worker() -> None:
    """One thread per worker, and no garbage collection of what the fork server imported."""
    # The server's modules are shared copy-on-write; the collector would touch every inherited
    # object and copy its page, so they are left out of collection.
    gc.freeze()
    # The pool already uses every core; BLAS, OpenMP or torch threads would only oversubscribe,
    # and the per-file products (64 x 129 x 251 for a spectrogram) are too small to split.
    _limit_threads()


def _limit_threads() -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # comes with scikit-learn; only speed depends on it
        pass
    else:
        threadpool_limits(1)  # for the worker's lifetime: nothing else runs there
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
