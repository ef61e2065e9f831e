"""Prints, one per line, the `name==version` pins given as arguments whose distribution
is missing from the running Python or installed at another version. The installers
(install-python-deps.sh, install-k8s-tools.sh) run it with the Python they install
into, and install only what it prints."""

import sys
from importlib.metadata import PackageNotFoundError, version

for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    try:
        if version(name) == wanted:
            continue
    except PackageNotFoundError:
        pass
    print(pin)
