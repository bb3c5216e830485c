"""The one exception type the library raises for bad user input."""


class InputError(ValueError):
    """Bad input from a user: the message names the input and says how to fix it.

    ``input_name`` is the name of the node input or function argument at fault, so that a
    host (ComfyUI) can point at it.
    """

    def __init__(self, input_name: str, message: str):
        self.input_name = input_name
        super().__init__(f"{input_name}: {message}")
