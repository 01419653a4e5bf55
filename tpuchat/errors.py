"""Errors a user can act on: each carries one line that says what went wrong."""


class TpuchatError(Exception):
    """Base class; str(error) is the one-line message shown to the user."""

    exit_code = 1


class RuntimeNotFound(TpuchatError):
    """No libsophon (or simulator) runtime library could be loaded."""

    exit_code = 3


class ModelError(TpuchatError):
    """The bmodel is missing, damaged, for another chip, or not an LLM bmodel."""

    exit_code = 4


class DeviceError(TpuchatError):
    """A device id does not exist or cannot be opened."""

    exit_code = 5


class PromptTooLong(TpuchatError):
    """The prompt does not fit the bmodel's prefill length."""

    exit_code = 6


class ContextFull(TpuchatError):
    """Every KV position is in use."""

    exit_code = 7


class EngineCrashed(TpuchatError):
    """The engine process died (abort, segfault, kill) or the runtime failed."""

    exit_code = 8


class TokenizerError(TpuchatError):
    """No usable tokenizer for the model."""

    exit_code = 9


class ImageError(TpuchatError):
    """An image that cannot be used: not an image, unreadable, too big, a model without vision,
    wrong preprocessing or position."""

    exit_code = 10


class ImageNotHeld(ImageError):
    """The engine was sent an image by digest only but does not hold it (it restarted, reopened
    or switched bmodels): the client sends the pixels again."""


class SharedWeightsRefused(TpuchatError):
    """A shared weight load was tried and the runtime misplaced the weights: the engine process
    that tried is not trusted to load anything else (the client starts a fresh one)."""


ERROR_TYPES = {
    cls.__name__: cls
    for cls in (
        TpuchatError,
        RuntimeNotFound,
        ModelError,
        DeviceError,
        PromptTooLong,
        ContextFull,
        EngineCrashed,
        TokenizerError,
        ImageError,
        ImageNotHeld,
        SharedWeightsRefused,
    )
}
