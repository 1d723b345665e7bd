"""Which builds' target identifications this code would make again: torch-free, so that the results
table can mark earlier builds without loading the offline stage's training stack."""

from __future__ import annotations

from offline.build.target_naming import name_target

# How a class's mask size is read off its optimisation; recorded so that a build reusing an earlier one's
# identification (--reuse-models) knows whether it would come out the same.
SIZE_AVERAGING = "mean over the second half of the steps"


def read_as_builds_now_do(identification: dict | None) -> bool:
    """Whether a manifest's `target_identification` read the mask sizes as this code does, named the class
    that this code names from those sizes (target_naming.py) and kept the named class's reversed trigger
    (`reversed_trigger`: its file, or None where no class was named; the trigger-direction rule is fitted
    from it): the one test of "current" that reusing it (--reuse-models),
    rebuilding a matrix cell (`offline bench`) and marking a cell in docs/RESULTS.md all apply, so that they
    never disagree about which builds are earlier ones."""
    return (identification is not None and identification.get("size_averaging") == SIZE_AVERAGING
            and "reversed_trigger" in identification and "mask_sizes" in identification
            and name_target(identification["mask_sizes"], identification["threshold"])
            == identification["suspected_target"])
