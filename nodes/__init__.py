"""The ComfyUI skin: node schemas, tooltips, type conversion, progress and cancel. No math here."""
