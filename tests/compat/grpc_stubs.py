"""What the generated-client scripts share: stubs generated at run time from a
.proto of proto/ with unmodified grpc_tools, and responses as JSON.

Imported by grpc_publish.py and grpc_webhooks.py (they run from this directory)."""

import importlib
import subprocess
import sys
from pathlib import Path

from google.protobuf import json_format

REPO_ROOT = Path(__file__).resolve().parents[2]


def generate_stubs(proto_root, out_dir, proto_file):
    """Runs protoc on `proto_file` (e.g. "herald/v1/webhooks.proto") and imports the
    generated message and service modules from out_dir."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            proto_file,
        ],
        check=True,
    )
    sys.path.insert(0, str(out_dir))
    module = proto_file.removesuffix(".proto").replace("/", ".")
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")


def to_json(message):
    """A response in protobuf's JSON mapping: field names as in the .proto, 64-bit
    integers as numbers, default values included."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
