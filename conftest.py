"""Root conftest: in-repo runs get the turnproof plugin even with entry-point autoloading off."""

import os

if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
    pytest_plugins = ["harness.pytest_plugin"]
