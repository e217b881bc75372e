"""Names shared by the vLLM engine (emoexp's process) and its worker extension (vLLM's workers)."""

__all__ = ["CONFIG_KEY", "POSITIONS_KEY", "SLOT_KEY"]

#: ``LLM(additional_config={CONFIG_KEY: {...}})`` asks the workers to install steering.
CONFIG_KEY = "emoexp_steering"
#: ``SamplingParams(extra_args={SLOT_KEY: k})`` steers a request with slot ``k`` (0 = unsteered).
SLOT_KEY = "emoexp_slot"
#: ``extra_args[POSITIONS_KEY]``: ``all`` or ``generated`` for this request (default: the engine's).
POSITIONS_KEY = "emoexp_positions"
