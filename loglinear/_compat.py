"""Deprecated module paths, kept for one release.

The package was reorganised into layers (see ``docs/architecture.md``). Importing a module
by its old path still works: a finder at the end of ``sys.meta_path`` maps the old name to
the new module, emits a :class:`DeprecationWarning`, and binds the new module under the
old name, so ``import loglinear.dynamics`` and ``loglinear.dynamics`` are the new module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# Modules split in two or more: the old name becomes a module that looks names up in each.
SPLIT_MODULES = {
    "loglinear.stability": ("loglinear.stats", "loglinear.approx.calibrate",
                            "loglinear.estimation", "loglinear.experiments.beyond.reweighting"),
}

MOVED_MODULES = {
    "loglinear.optim": "loglinear.newton",
    "loglinear.pairlosses": "loglinear.losses",
    "loglinear.dynamics": "loglinear.experiments.three_d.dynamics",
    "loglinear.explore": "loglinear.experiments.explore",
    "loglinear.plots_explore": "loglinear.plots",
    "loglinear.experiments.rates_analysis": "loglinear.experiments.rates.analysis",
    "loglinear.experiments.beyond_common": "loglinear.experiments.beyond.common",
    "loglinear.experiments.beyond_neural": "loglinear.experiments.beyond.neural",
    "loglinear.experiments.beyond_stability": "loglinear.experiments.beyond.stability",
    "loglinear.experiments.beyond_tau": "loglinear.experiments.beyond.tau",
    "loglinear.torch.sgd": "loglinear.experiments.beyond.sgd",
    "loglinear.torch.shift": "loglinear.experiments.llm_shift.run",
    "loglinear.torch.shift_config": "loglinear.experiments.llm_shift.config",
    "loglinear.torch.shift_data": "loglinear.experiments.llm_shift.data",
    "loglinear.torch.shift_eval": "loglinear.experiments.llm_shift.evaluate",
    "loglinear.torch.shift_train": "loglinear.experiments.llm_shift.train",
    "loglinear.torch.emotion": "loglinear.experiments.llm_shift.emotion",
    "loglinear.torch.diagnostics": "loglinear.experiments.three_d.lm_probe",
    "loglinear.torch.train": "loglinear.torch.loop",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        name = module.__name__
        warnings.warn(f"{name} moved to {self.target}; the old path is deprecated and will "
                      "be removed in the next release", DeprecationWarning, stacklevel=2)
        # The import system re-reads sys.modules[name] after exec_module, so the caller
        # (and the parent package's attribute) get the new module itself.
        sys.modules[name] = importlib.import_module(self.target)


class _Split(importlib.abc.Loader):
    def __init__(self, targets: tuple[str, ...]):
        self.targets = targets

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        warnings.warn(f"{module.__name__} was split into {', '.join(self.targets)}; the old "
                      "path is deprecated and will be removed in the next release",
                      DeprecationWarning, stacklevel=2)
        targets = self.targets

        def __getattr__(attr):
            for t in targets:
                mod = importlib.import_module(t)
                if hasattr(mod, attr):
                    return getattr(mod, attr)
            raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}")

        module.__getattr__ = __getattr__


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, _Alias(MOVED_MODULES[fullname]))
        if fullname in SPLIT_MODULES:
            return importlib.util.spec_from_loader(fullname, _Split(SPLIT_MODULES[fullname]))
        return None


def install() -> None:
    """Append the finder to ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
