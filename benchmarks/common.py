"""What every benchmark returns: rows of a figure measured against a baseline from the same run."""

import dataclasses
import os
import platform


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured figure and the baseline it is compared with (same process, same data)."""

    benchmark: str
    figure: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    target: str = ""
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value


def machine() -> str:
    """CPU model and core count, for the results table."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def shared_faces_dir() -> str | None:
    """../shared/data/faces beside the checkout, when present (benchmarks may use it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.normpath(os.path.join(here, "..", "..", "shared", "data", "faces"))
    return path if os.path.isdir(path) else None
