"""``sluice review ...``: serve the web app, manage reviewers' credentials, check and publish chain policies.

sluice review serve
sluice review add-reviewer --file reviewers.json --id ann --role analyst   # asks for the password
sluice review policy check policy.json | publish policy.json | default
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

import orjson

from models.review_policy import DEFAULT_POLICY, parse_policy
from models.wire import InvalidEvent
from operators.kafka.admin import BrokerUnreachable, TopicsMissing, check_broker, log, require_topics
from operators.kafka.sink import CheckedProducer, DeliveryFailed
from sluice.review_web.auth import CredentialsError, Reviewers
from sluice.settings import ReviewSettings


def serve(args: argparse.Namespace) -> int:
    from sluice.review_web.app import serve as run_server

    settings = ReviewSettings.from_env()
    try:
        check_broker(settings.connection(), settings.connect_timeout_s)
        return run_server(settings)
    except (BrokerUnreachable, TopicsMissing) as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.id}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _known_role(role: str, policy_file: str) -> None:
    """Refuse a role no chain step can ask for: such a reviewer could sign in but never act on a case."""
    where = policy_file or "the built-in policy"
    try:
        roles = parse_policy(Path(policy_file).read_bytes() if policy_file else orjson.dumps(DEFAULT_POLICY)).roles
    except InvalidEvent as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if role not in roles:
        hint = "" if policy_file else "; pass --policy FILE to check against your own policy"
        raise ValueError(f"--role {role!r} is not one of {where}'s roles ({', '.join(roles)}){hint}")


def add_reviewer(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        _known_role(args.role, args.policy)
        reviewers = Reviewers.load(path) if path.exists() else Reviewers()
        reviewers.add(args.id, args.role, _password(args), args.name or "")
    except (CredentialsError, ValueError, OSError) as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    except EOFError:  # Ctrl-D at the password prompt, or nothing on stdin
        print("sluice: error: no password given; nothing saved", file=sys.stderr)
        return 2
    reviewers.save(path)
    print(f"{args.id} ({args.role}) saved in {path} ({len(reviewers)} reviewer(s))")
    return 0


def policy(args: argparse.Namespace) -> int:
    if args.action == "default":
        print(json.dumps(DEFAULT_POLICY, indent=1))
        return 0
    if not args.file:
        print(f"sluice: error: `sluice review policy {args.action}` needs a policy file", file=sys.stderr)
        return 2
    try:
        raw = Path(args.file).read_bytes()
        parsed = parse_policy(raw)
    except OSError as exc:
        print(f"sluice: error: cannot read the policy {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except InvalidEvent as exc:
        print(f"sluice: error: {args.file}: {exc}", file=sys.stderr)
        return 2
    chains = ", ".join(f"{c.name} ({' -> '.join(s.role for s in c.steps)})" for c in parsed.chains)
    print(f"policy {parsed.version}: roles {' < '.join(parsed.roles)}; chains {chains}")
    if args.action == "check":
        return 0
    settings = ReviewSettings.from_env()
    require_topics(settings.connection(), [settings.policies_topic])
    producer = CheckedProducer(settings.connection().producer_config(logger=log))
    producer.produce(settings.policies_topic, key=b"policy", value=orjson.dumps(orjson.loads(raw)))
    try:
        producer.flush_or_raise(10, "policy records")
    except DeliveryFailed as exc:
        print(f"sluice: error: the policy was not published: {exc}", file=sys.stderr)
        return 1
    print(f"published to {settings.policies_topic}: applies to cases opened from now on")
    return 0


def add_arguments(review: argparse.ArgumentParser) -> None:
    """The ``review`` subcommands."""
    sub = review.add_subparsers(dest="review_command", required=True, metavar="{serve,add-reviewer,policy}")
    p = sub.add_parser("serve", help="the reviewer web app (SLUICE_REVIEW_HOST:SLUICE_REVIEW_PORT)")
    p.set_defaults(fn=serve)
    p = sub.add_parser("add-reviewer", help="add or update a reviewer in a credentials file (scrypt-hashed)")
    p.add_argument("--file", required=True, help="credentials file (created with mode 0600)")
    p.add_argument("--id", required=True)
    p.add_argument("--role", required=True, help="one of the policy's roles, e.g. analyst, senior, head")
    p.add_argument("--policy", default="", help="policy JSON whose roles --role must be among (default: built-in)")
    p.add_argument("--name", default="", help="shown in the page header")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    p.set_defaults(fn=add_reviewer)
    p = sub.add_parser("policy", help="check or publish a chain policy, or print the built-in one")
    p.add_argument("action", choices=["check", "publish", "default"])
    p.set_defaults(needs_broker=lambda a: a.action == "publish")
    p.add_argument("file", nargs="?", default="", help="policy JSON (check, publish)")
    p.set_defaults(fn=policy)
