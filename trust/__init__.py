"""TRuST: find a concept's neurons in a text-to-image diffusion model's cross-attention, and erase it.

    import trust

    model = trust.load_model("shapes")                      # the embedded model, or an SD 1.x folder / hub id
    erased = trust.load_erased(model, "erased/red-circle")  # an erase folder written by `trust erase`
    images = trust.generate(erased, "a red circle", num_images_per_prompt=4, seed=0).images

    from trust.unlearn import unlearn  # (trust.unlearn is the module: a package attribute cannot be both)

    scenario = trust.scenario_from_prompts("a red circle", ["a red square", "a blue circle"])
    result = unlearn(model, scenario, trust.UnlearnConfig.for_method("trust+p"))

The names load lazily, so that `import trust` (and the `trust` command's start) does not load torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata

try:
    __version__ = importlib.metadata.version("trust")  # pyproject.toml's
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

# name -> the module that defines it. `unlearn` is not here: importing the module trust.unlearn (as anything that
# erases does) sets the package's attribute `unlearn` to that module, so a lazily exported function of that name
# would turn into the module after first use
_EXPORTS = {
    "load_model": "models",
    "DiffusionModel": "models",
    "load_erased": "artifacts",
    "export_diffusers": "artifacts",
    "generate": "generation",
    "evaluate": "evaluation",
    "UnlearnConfig": "unlearn",
    "StepReport": "unlearn",
    "PRESETS": "concepts",
    "Scenario": "concepts",
    "scenario_from_prompts": "concepts",
    "METHODS": "methods",
    "TrustError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'trust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
