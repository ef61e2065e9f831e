#!/usr/bin/env python3
"""Calls Herald's webhook administration API (herald.v1.WebhookAdmin) with unmodified
grpcio, stubs generated at run time from proto/herald/v1/webhooks.proto.

    grpc_webhooks.py --target 127.0.0.1:50051 --token TOKEN METHOD 'REQUEST_JSON'

METHOD is an RPC of the service: CreateEndpoint, GetEndpoint, ListEndpoints,
UpdateEndpoint, DeleteEndpoint, RotateSecret, ListAttempts, ListDeadLetters or
ReplayDeadLetters. REQUEST_JSON is its request in protobuf's JSON mapping (field
names as in the .proto), e.g. '{"app_id": "my-app", "url": "https://example.com/hook"}'.

Output is one JSON object on stdout: the response (field names as in the .proto,
enums by name, 64-bit integers as numbers, default values included), or
{"code": "INVALID_ARGUMENT", "message": "..."} when the server answers with an
error status. Exit status: 0 for a response, 1 for an error status, 2 for a usage
error (unknown method, request not matching the message).
"""

import argparse
import json
import sys
import tempfile

import grpc
from google.protobuf import json_format

from grpc_stubs import REPO_ROOT, generate_stubs, to_json

PROTO_FILE = "herald/v1/webhooks.proto"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--proto-root", default=str(REPO_ROOT / "proto"))
    parser.add_argument("method")
    parser.add_argument("request", help="the request message as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="herald-grpc-stubs-") as stubs_dir:
        pb, pb_grpc = generate_stubs(args.proto_root, stubs_dir, PROTO_FILE)
        methods = pb.DESCRIPTOR.services_by_name["WebhookAdmin"].methods_by_name
        if args.method not in methods:
            print(f"unknown method {args.method!r}; WebhookAdmin has {', '.join(methods)}", file=sys.stderr)
            return 2
        method = methods[args.method]
        request_type = getattr(pb, method.input_type.name)
        try:
            request = json_format.ParseDict(json.loads(args.request), request_type())
        except (ValueError, json_format.ParseError) as error:
            print(f"the request is not a valid {method.input_type.name}: {error}", file=sys.stderr)
            return 2
        metadata = [("authorization", f"Bearer {args.token}")]
        with grpc.insecure_channel(args.target) as channel:
            stub = pb_grpc.WebhookAdminStub(channel)
            try:
                response = getattr(stub, args.method)(request, metadata=metadata, timeout=args.timeout)
            except grpc.RpcError as error:
                print(json.dumps({"code": error.code().name, "message": error.details()}))
                return 1
    print(json.dumps(to_json(response)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
