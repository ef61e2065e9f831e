#!/usr/bin/env python3
"""Calls Herald's gRPC API (herald.v1.Publisher) with unmodified grpcio.

The stubs are generated at run time from proto/herald/v1/publisher.proto by
grpc_tools.protoc, into a temporary directory that is removed on exit: if the
compatibility suite passes, the published schema alone is enough to write a
client, without ever seeing Herald's code.

    grpc_publish.py --target 127.0.0.1:50051 --token TOKEN --app-id APP COMMAND ...

Commands (one RPC each; `COMMAND --help` for their options):
    publish              Publish: one event to --channel (repeatable)
    batch                PublishBatch: --events, a JSON list of Event messages
    stream               PublishStream: --count events, sequences 1..count
    get-channel          GetChannel
    list-channels        ListChannels
    list-presence-users  ListPresenceUsers
    terminate-user       TerminateUserConnections
    get-history          GetHistory of --channel (--since, --epoch, --limit, --direction)

Output is one JSON object on stdout: the response in protobuf's JSON mapping
(field names as in the .proto, 64-bit integers as numbers), or, when the server
answers with an error status, {"code": "INVALID_ARGUMENT", "message": "..."}.
Exit status: 0 for a response, 1 for an error status. With --expect-code CODE
the call is expected to fail with that status: 0 if it does, 1 otherwise.
"""

import argparse
import json
import sys
import tempfile

import grpc
from google.protobuf import json_format

from grpc_stubs import REPO_ROOT, generate_stubs, to_json

PROTO_FILE = "herald/v1/publisher.proto"


def event_from_args(pb, args):
    return pb.Event(
        name=args.event,
        data=args.data,
        channels=args.channel,
        exclude_socket_id=args.exclude_socket_id,
        idempotency_key=args.idempotency_key,
    )


def stream_requests(pb, args):
    """PublishStream requests with sequences 1..count, each carrying {"n": sequence}.

    The message at --invalid-at names an invalid channel, to show that its error
    is answered in its place and the stream goes on.
    """
    for sequence in range(1, args.count + 1):
        channel = "invalid channel name" if sequence == args.invalid_at else args.channel
        yield pb.PublishStreamRequest(
            sequence=sequence,
            app_id=args.app_id,
            event=pb.Event(name=args.event, data=json.dumps({"n": sequence}), channels=[channel]),
        )


def call(pb, stub, args, metadata):
    """Performs the command's RPC and returns its result as a JSON-ready dict."""
    options = {"metadata": metadata, "timeout": args.timeout}
    if args.command == "publish":
        request = pb.PublishRequest(app_id=args.app_id, event=event_from_args(pb, args))
        return to_json(stub.Publish(request, **options))
    if args.command == "batch":
        request = json_format.ParseDict({"app_id": args.app_id, "events": json.loads(args.events)}, pb.PublishBatchRequest())
        return to_json(stub.PublishBatch(request, **options))
    if args.command == "stream":
        responses = stub.PublishStream(stream_requests(pb, args), **options)
        return {"responses": [to_json(response) for response in responses]}
    if args.command == "get-channel":
        request = pb.GetChannelRequest(app_id=args.app_id, channel=args.channel)
        return to_json(stub.GetChannel(request, **options))
    if args.command == "list-channels":
        request = pb.ListChannelsRequest(app_id=args.app_id, prefix=args.prefix)
        return to_json(stub.ListChannels(request, **options))
    if args.command == "list-presence-users":
        request = pb.ListPresenceUsersRequest(app_id=args.app_id, channel=args.channel)
        return to_json(stub.ListPresenceUsers(request, **options))
    if args.command == "terminate-user":
        request = pb.TerminateUserConnectionsRequest(app_id=args.app_id, user_id=args.user_id)
        return to_json(stub.TerminateUserConnections(request, **options))
    if args.command == "get-history":
        request = pb.GetHistoryRequest(
            app_id=args.app_id,
            channel=args.channel,
            epoch=args.epoch,
            limit=args.limit,
            direction=pb.HistoryDirection.Value(f"HISTORY_DIRECTION_{args.direction}"),
        )
        if args.since is not None:
            request.since = args.since
        return to_json(stub.GetHistory(request, **options))
    raise AssertionError(f"unhandled command {args.command}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port of Herald's gRPC listener")
    parser.add_argument("--token", help="API token, sent as 'authorization: Bearer <token>'; omitted: no metadata")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of the call, in seconds")
    parser.add_argument("--expect-code", help="the call must fail with this status code name, e.g. UNAUTHENTICATED")
    parser.add_argument("--ca-file", help="TLS: PEM CA to trust; without it the channel is plaintext")
    parser.add_argument("--cert-file", help="TLS: PEM client certificate (with --key-file)")
    parser.add_argument("--key-file", help="TLS: PEM key of the client certificate")
    parser.add_argument("--proto-root", default=str(REPO_ROOT / "proto"), help="directory holding " + PROTO_FILE)
    commands = parser.add_subparsers(dest="command", required=True)

    publish = commands.add_parser("publish", help="Publish one event")
    publish.add_argument("--channel", action="append", required=True, help="repeat for several channels")
    publish.add_argument("--event", required=True)
    publish.add_argument("--data", required=True)
    publish.add_argument("--exclude-socket-id", default="")
    publish.add_argument("--idempotency-key", default="")

    batch = commands.add_parser("batch", help="PublishBatch")
    batch.add_argument("--events", required=True, help='JSON list of Event, e.g. [{"name": "e", "data": "d", "channels": ["c"]}]')

    stream = commands.add_parser("stream", help="PublishStream of --count events")
    stream.add_argument("--channel", required=True)
    stream.add_argument("--event", required=True)
    stream.add_argument("--count", type=int, required=True)
    stream.add_argument("--invalid-at", type=int, help="sequence of a message sent to an invalid channel name")

    for name, help_text in [("get-channel", "GetChannel"), ("list-presence-users", "ListPresenceUsers")]:
        commands.add_parser(name, help=help_text).add_argument("--channel", required=True)
    commands.add_parser("list-channels", help="ListChannels").add_argument("--prefix", default="")
    commands.add_parser("terminate-user", help="TerminateUserConnections").add_argument("--user-id", required=True)
    history = commands.add_parser("get-history", help="GetHistory")
    history.add_argument("--channel", required=True)
    history.add_argument("--since", type=int)
    history.add_argument("--epoch", default="")
    history.add_argument("--limit", type=int, default=0)
    history.add_argument("--direction", choices=["UNSPECIFIED", "FORWARD", "BACKWARD"], default="UNSPECIFIED")
    return parser.parse_args()


def read(path):
    with open(path, "rb") as file:
        return file.read()


def open_channel(args):
    """A plaintext channel, or with --ca-file a TLS one (a client certificate too with --cert-file)."""
    if args.ca_file is None:
        return grpc.insecure_channel(args.target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca_file),
        private_key=read(args.key_file) if args.key_file else None,
        certificate_chain=read(args.cert_file) if args.cert_file else None,
    )
    return grpc.secure_channel(args.target, credentials)


def main():
    args = parse_args()
    metadata = [("authorization", f"Bearer {args.token}")] if args.token is not None else []
    with tempfile.TemporaryDirectory(prefix="herald-grpc-stubs-") as stubs_dir:
        pb, pb_grpc = generate_stubs(args.proto_root, stubs_dir, PROTO_FILE)
        with open_channel(args) as channel:
            try:
                result = call(pb, pb_grpc.PublisherStub(channel), args, metadata)
                failed_with = None
            except grpc.RpcError as error:
                result = {"code": error.code().name, "message": error.details()}
                failed_with = error.code().name
    print(json.dumps(result))
    if args.expect_code is None:
        return 0 if failed_with is None else 1
    if failed_with != args.expect_code:
        print(f"expected status {args.expect_code}, got {failed_with or 'a response'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
