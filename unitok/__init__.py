"""UniTok: every vision-language task as a prompt turned into a token sequence."""
import os

# GNU OpenMP threads spin while waiting; when the cores are shared (DataLoader workers, a second
# process) a spinning thread holds a core another thread needs, and a training step measured 40x
# slower here. Passive waiting avoids the cliff. It only takes effect if set before torch loads,
# which is the case for the `unitok` CLI and for `import unitok` before `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["Pipeline"]


def __getattr__(name: str):
    # Lazy, so `import unitok.data` (e.g. in DataLoader workers) does not pay for the model stack.
    if name == "Pipeline":
        from .inference.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'unitok' has no attribute {name!r}")
