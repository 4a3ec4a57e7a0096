# The checkout root is the ComfyUI pack, collected as a plain folder: see tests/checkout_root_plugin.py.
pytest_plugins = ["checkout_root_plugin"]
