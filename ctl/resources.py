"""calicoctl's resource verbs against the datastore: apply, create, replace, delete, get, ipam show.

Every document is validated (``crds.load``) and checked against what is stored (pool overlap,
immutable fields) before anything is written; one bad document in a file means nothing is written.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable

import yaml

import datastore
from crds import InvalidResource, IPPool, Resource, kind_class, load
from ctl import output
from datastore.base import AlreadyExists, Conflict, Datastore, DatastoreError, NotFound


class UsageError(Exception):
    """Bad input from the user: printed with the field and reason, exit code 2."""


def reexec_in_lab(lab: str, argv: list[str]) -> int:
    """Run this same command inside the lab's fabric namespace, where its etcd listens."""
    from lab.lab import LabState

    state = LabState.load(lab)
    rest, skip = [], False
    for arg in argv:  # drop --lab NAME / --lab=NAME
        if skip:
            skip = False
        elif arg == "--lab":
            skip = True
        elif not arg.startswith("--lab="):
            rest.append(arg)
    os.execvp("ip", ["ip", "netns", "exec", f"{lab}-fabric", sys.executable, "-m", "ctl.main",
                     *rest, "--etcd-endpoints", state.endpoint])
    return 1  # not reached


def read_documents(filename: str) -> list[Resource]:
    text = sys.stdin.read() if filename == "-" else open(filename).read()
    docs: list = []
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
            docs.extend(doc["items"])
        else:
            docs.append(doc)
    try:
        return [load(d) for d in docs]
    except InvalidResource as exc:
        raise UsageError(str(exc)) from None


def check_against_store(ds: Datastore, new: Resource) -> None:
    """Cross-resource rules calicoctl enforces: pools must not overlap; cidr/blockSize immutable."""
    if not isinstance(new, IPPool):
        return
    for other in ds.list("IPPool").items:
        if other.name == new.name:
            for attr, wire in (("cidr", "cidr"), ("block_size", "blockSize")):
                if getattr(other.spec, attr) != getattr(new.spec, attr):
                    raise UsageError(f"IPPool {new.name}: spec.{wire}: cannot be changed "
                                     f"(is {getattr(other.spec, attr)}); delete and re-create the pool")
        elif other.spec.network.overlaps(new.spec.network):
            raise UsageError(f"IPPool {new.name}: spec.cidr: {new.spec.cidr} overlaps "
                             f"IPPool {other.name} ({other.spec.cidr})")


def write(ds: Datastore, verb: str, items: Iterable[Resource]) -> int:
    items = list(items)
    for r in items:
        check_against_store(ds, r)
    done = 0
    for r in items:
        try:
            if verb == "create":
                ds.create(r.with_revision(None))
            elif verb == "replace":
                current = ds.get(r.KIND, r.name, r.metadata.namespace)
                ds.update(r.with_revision(r.metadata.resource_version
                                          or current.metadata.resource_version))
            else:
                ds.apply(r)
        except (AlreadyExists, NotFound, Conflict) as exc:
            print(f"Failed to {verb} {r.KIND} {r.name}: {exc}", file=sys.stderr)
            continue
        done += 1
    kinds = sorted({r.KIND for r in items})
    past = {"apply": "applied", "create": "created", "replace": "replaced"}[verb]
    print(f"Successfully {past} {done} {'/'.join(repr(k) for k in kinds)} resource(s)")
    return 0 if done == len(items) else 1


def run(args) -> int:
    try:
        ds = datastore.connect(args.datastore_type, etcd_endpoints=args.etcd_endpoints)
    except ValueError as exc:
        raise UsageError(f"{exc} (or set ETCD_ENDPOINTS)") from None
    try:
        if args.cmd in ("apply", "create", "replace"):
            return write(ds, args.cmd, read_documents(args.filename))
        if args.cmd == "delete":
            return delete(ds, args)
        if args.cmd == "get":
            return get(ds, args)
        if args.cmd == "ipam":
            return ipam_show(ds, args.show_blocks)
    except DatastoreError as exc:
        print(f"pycalicoctl: datastore error: {exc}", file=sys.stderr)
        return 1
    finally:
        ds.close()
    raise UsageError(f"unknown command {args.cmd}")


def delete(ds: Datastore, args) -> int:
    if args.filename:
        targets = [(r.KIND, r.name, r.metadata.namespace) for r in read_documents(args.filename)]
    elif args.kind and args.name:
        targets = [(_kind(args.kind).KIND, args.name, args.namespace)]
    else:
        raise UsageError("delete needs -f FILE or KIND NAME")
    failed = 0
    for kind, name, ns in targets:
        try:
            ds.delete(kind, name, ns)
        except NotFound as exc:
            print(f"Failed to delete: {exc}", file=sys.stderr)
            failed += 1
    print(f"Successfully deleted {len(targets) - failed} resource(s)")
    return 1 if failed else 0


def _kind(name: str) -> type[Resource]:
    try:
        return kind_class(name)
    except InvalidResource as exc:
        raise UsageError(str(exc)) from None


def get(ds: Datastore, args) -> int:
    cls = _kind(args.kind)
    if args.name:
        try:
            items, revision = [ds.get(cls.KIND, args.name, args.namespace)], 0
        except NotFound as exc:
            print(f"Failed to get resources: {exc}", file=sys.stderr)
            return 1
    else:
        listing = ds.list(cls.KIND, args.namespace)
        items, revision = listing.items, listing.revision
    if args.output in ("yaml", "json"):
        print(output.documents(cls.KIND, items, revision, args.output, single=bool(args.name)))
    else:
        headers, rows = output.resource_rows(cls.KIND, items, wide=args.output == "wide",
                                             default_asn=_global_asn(ds))
        print(output.columns(headers, rows))
    return 0


def _global_asn(ds: Datastore) -> int:
    try:
        return ds.get("BGPConfiguration", "default").spec.as_number
    except NotFound:
        return output.DEFAULT_ASN


def ipam_show(ds: Datastore, show_blocks: bool) -> int:
    pools = [p for p in ds.list("IPPool").items if p.spec.network.version == 4]
    headers, rows = output.ipam_rows(pools, ds.list("IPAMBlock").items, show_blocks)
    print(output.boxed(headers, rows))
    return 0
