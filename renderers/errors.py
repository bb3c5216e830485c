"""The one exception type the library raises for bad user input."""


def _rebuild_input_error(input_name: str, message: str) -> "InputError":
    """Unpickle an :class:`InputError` (its class is not importable under its display name)."""
    return InputError(input_name, message)


class InputError(ValueError):
    """Bad input from a user: the message names the input and says how to fix it.

    ``input_name`` is the name of the node input or function argument at fault, so that a
    host (ComfyUI) can point at it.

    ComfyUI shows an error's type as ``type(ex).__module__ + '.' + __qualname__``, leaving the
    module out only for ``builtins``; tracebacks leave it out for ``builtins`` too. So the class
    presents itself as ``Realiz3D input error`` (not the long path of the pack's folder). It is
    still ``realiz3d.renderers.errors.InputError`` to Python code (``except InputError``), and
    pickles through :func:`_rebuild_input_error`.
    """

    def __init__(self, input_name: str, message: str):
        self.input_name = input_name
        self.message = message
        super().__init__(f"{input_name}: {message}")

    def __reduce__(self):
        return _rebuild_input_error, (self.input_name, self.message), self.__dict__ or None


#: what users see as the error type (ComfyUI, tracebacks, repr)
DISPLAY_NAME = "Realiz3D input error"
InputError.__module__ = "builtins"
InputError.__qualname__ = DISPLAY_NAME
